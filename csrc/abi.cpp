// ABI version of the deftx native library; the Python loader refuses any other version.
#include "common.h"

// Bump whenever an exported function's signature or behaviour changes.
DEFTX_EXPORT int32_t deftx_native_abi_version() { return 2; }

#ifndef DEFTX_NATIVE_SOURCE_FINGERPRINT
#define DEFTX_NATIVE_SOURCE_FINGERPRINT ""
#endif

// SHA-256 (hex) fingerprint of the csrc/ files this library was built from (CMakeLists.txt);
// the loader refuses the library when csrc/ beside it has changed since.
DEFTX_EXPORT const char* deftx_native_source_fingerprint() { return DEFTX_NATIVE_SOURCE_FINGERPRINT; }
