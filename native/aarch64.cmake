# Cross-compiling libedgetune_device for linux-aarch64 with Debian's g++-aarch64-linux-gnu:
#   cmake -S native -B build/native-arm64 -DCMAKE_TOOLCHAIN_FILE=native/aarch64.cmake && cmake --build build/native-arm64
# (native/tools/arm64.sh builds it and runs it under qemu-aarch64 against the x86-64 build.)
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
