"""Location of the native CPU backend's shared library (built by CMake at install time)."""
