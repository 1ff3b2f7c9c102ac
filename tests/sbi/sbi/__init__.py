"""Stand-in for the sbi package (picklefs test fixtures). Module paths mirror real sbi >= 0.23."""
__version__ = "0.23.0+picklefs-standin"
