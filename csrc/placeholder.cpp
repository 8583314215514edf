extern "C" int deftx_native_abi_version() { return 1; }
