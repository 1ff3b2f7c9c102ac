// torch-zip-check.cpp - an independent reader for the zip writer's tests.
//
// Opens FILE with libtorch's caffe2::serialize::PyTorchStreamReader (what
// torch.load and torch::jit::load use), and for every record prints
//   NAME SIZE CRC32 OFFSET
// (name without the archive prefix, size in bytes, zlib CRC-32 of the bytes
// getRecord returned, in hex, and getRecordOffset).  Exit 0 when every
// record was read and every offset is a multiple of 64, 1 when an offset is
// not, 2 when the reader throws.
//
// torch-zip-check --tensors FILE reads FILE with torch::jit::pickle_load
// (libtorch's own unpickler; a state dict: a dict of tensors) and prints
//   KEY DTYPE NUMEL CRC32
// per tensor, the CRC-32 over its contiguous bytes.  Exit 2 when it throws.
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <zlib.h>

#include <fstream>
#include <iterator>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

static uLong crc_of(const unsigned char *p, size_t size)
{
	uLong crc = crc32(0L, Z_NULL, 0);
	for (size_t done = 0; done < size;) {
		uInt k = size - done > 0x40000000u ? 0x40000000u : (uInt)(size - done);
		crc = crc32(crc, p + done, k);
		done += k;
	}
	return crc;
}

static int print_tensors(const char *path)
{
	try {
		std::ifstream in(path, std::ios::binary);
		std::vector<char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
		c10::IValue v = torch::jit::pickle_load(data);
		for (const auto &item : v.toGenericDict()) {
			at::Tensor t = item.value().toTensor().contiguous();
			std::printf("%s %s %lld %08lx\n", item.key().toStringRef().c_str(),
				    std::string(c10::toString(t.scalar_type())).c_str(), (long long)t.numel(),
				    crc_of(static_cast<const unsigned char *>(t.data_ptr()), t.nbytes()));
		}
		return 0;
	} catch (const std::exception &e) {
		std::fprintf(stderr, "torch-zip-check: %s\n", e.what());
		return 2;
	}
}

int main(int argc, char **argv)
{
	if (argc == 3 && std::string(argv[1]) == "--tensors")
		return print_tensors(argv[2]);
	if (argc != 2) {
		std::fprintf(stderr, "usage: torch-zip-check FILE\n");
		return 2;
	}
	try {
		caffe2::serialize::PyTorchStreamReader reader{std::string(argv[1])};
		int status = 0;
		for (const std::string &name : reader.getAllRecords()) {
			size_t off = reader.getRecordOffset(name);
			auto rec = reader.getRecord(name);
			const unsigned char *p = static_cast<const unsigned char *>(std::get<0>(rec).get());
			size_t size = std::get<1>(rec);
			uLong crc = crc32(0L, Z_NULL, 0);
			for (size_t done = 0; done < size;) {
				uInt k = size - done > 0x40000000u ? 0x40000000u : (uInt)(size - done);
				crc = crc32(crc, p + done, k);
				done += k;
			}
			std::printf("%s %zu %08lx %zu\n", name.c_str(), size, crc, off);
			if (off % 64 != 0) {
				std::fprintf(stderr, "%s: offset %zu is not a multiple of 64\n", name.c_str(), off);
				status = 1;
			}
		}
		return status;
	} catch (const std::exception &e) {
		std::fprintf(stderr, "torch-zip-check: %s\n", e.what());
		return 2;
	}
}
