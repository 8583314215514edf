// ABI version of the deftx native library; the Python loader refuses any other version.
#include "common.h"

// Bump whenever an exported function's signature or behaviour changes.
DEFTX_EXPORT int32_t deftx_native_abi_version() { return 2; }
