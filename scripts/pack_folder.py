"""Pack a folder of many small files into one file and back (for trips to the GPU machine, whose transfer
limit counts each small file's disk blocks). Usage:
    python scripts/pack_folder.py pack   SRC_DIR  OUT_FILE
    python scripts/pack_folder.py unpack IN_FILE  DEST_DIR
The packed file is a JSON header line (relative paths and sizes) followed by the files' bytes.
"""
import json
import os
import sys


def pack(src, out):
    paths = sorted(os.path.relpath(os.path.join(d, f), src) for d, _, fs in os.walk(src) for f in fs)
    sizes = [os.path.getsize(os.path.join(src, p)) for p in paths]
    with open(out, "wb") as f:
        f.write(json.dumps({"paths": paths, "sizes": sizes}).encode() + b"\n")
        for p in paths:
            with open(os.path.join(src, p), "rb") as g:
                f.write(g.read())
    print(f"packed {len(paths)} files, {sum(sizes) / 2**20:.1f} MiB")


def unpack(inp, dest):
    with open(inp, "rb") as f:
        head = json.loads(f.readline())
        for p, n in zip(head["paths"], head["sizes"]):
            path = os.path.join(dest, p)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as g:
                g.write(f.read(n))
    print(f"unpacked {len(head['paths'])} files into {dest}")


if __name__ == "__main__":
    {"pack": pack, "unpack": unpack}[sys.argv[1]](sys.argv[2], sys.argv[3])
