"""Run a board app (or a line of code) with its modules in a ROMFS image, as a board runs them.

micropython [-X heapsize=N] benchmarks/mp_romfs_boot.py IMAGE SCRIPT_PATH ARGS...
micropython [-X heapsize=N] benchmarks/mp_romfs_boot.py IMAGE -c CODE

A board with a ROM partition (MicroPython 1.25+, `mpremote romfs deploy`) executes the .mpy
bytecode of its modules in place, from flash, so it does not take heap. The unix port has no ROM
partition; the image is read into one buffer and mounted with `vfs.VfsRom`, and imports from it
execute in place as on the board. The buffer itself takes heap, the same in the app's run and in
its raw baseline's, so it cancels out of the app's figure. SCRIPT_PATH names the entry script
(run_bp.py ...); it is imported from the image's host/ directory with sys.argv as the script
would have seen it.
"""

import os
import sys

import vfs

image_path = sys.argv[1]
image = bytearray(os.stat(image_path)[6])
with open(image_path, "rb") as image_file:
    image_file.readinto(image)
vfs.mount(vfs.VfsRom(image), "/rom")
sys.path.append("/rom")
sys.path.append("/rom/host")

if sys.argv[2] == "-c":
    code = sys.argv[3]
    del sys.argv[1:]
    exec(code)
else:
    name = sys.argv[2].rsplit("/", 1)[-1].rsplit(".", 1)[0]
    sys.argv[:] = ["/rom/host/" + name + ".py"] + sys.argv[3:]
    __import__(name)
