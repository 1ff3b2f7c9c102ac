"""sbi stand-in (picklefs test fixtures)."""
