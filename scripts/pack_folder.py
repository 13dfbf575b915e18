"""Pack a folder of many small files into one file and back (for trips to the GPU machine, whose transfer
limit counts each small file's disk blocks). Usage:
    python scripts/pack_folder.py pack   SRC_DIR  OUT_FILE
    python scripts/pack_folder.py unpack IN_FILE  DEST_DIR
The packed file is a JSON header line (relative paths and sizes) followed by the files' bytes. A missing
verb or a source that is not there is refused in one line (exit 2) before anything is written.
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dnlib import cli  # noqa: E402


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


def main(argv=None) -> int:
    p = cli.ArgumentParser(prog="pack_folder.py", description=__doc__.split("\n")[0])
    verbs = p.add_subparsers(dest="verb", required=True, metavar="{pack,unpack}")
    q = verbs.add_parser("pack", help="pack SRC_DIR into OUT_FILE")
    q.add_argument("src", type=cli.in_dir, metavar="SRC_DIR")
    q.add_argument("out", type=cli.out_file, metavar="OUT_FILE")
    q = verbs.add_parser("unpack", help="unpack IN_FILE into DEST_DIR")
    q.add_argument("inp", type=cli.in_file, metavar="IN_FILE")
    q.add_argument("dest", type=cli.out_dir, metavar="DEST_DIR")
    a = p.parse_args(argv)
    if a.verb == "pack":
        pack(a.src, a.out)
    else:
        unpack(a.inp, a.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
