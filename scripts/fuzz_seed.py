#!/usr/bin/env python3
"""Seed the fuzz corpora (fuzz/) from real image directories (scripts/fuzz.sh calls it).

    fuzz_seed.py SRC OUT

SRC holds image directories `img-NAME/` (with `img-NAME.json`, `ferry inspect --json` of it,
when there is one); OUT gets `image_decode/`, `image_dir/`, `frame/` and `pages_zstd/` (from
compressed page files), one file per input,
named by its SHA-1 (the way libFuzzer names corpus files). Page files are cut to their header
page plus at most one page: seeds stay small, and the targets fix sizes and checksums (see
the flag bytes in fuzz/fuzz_targets/).
"""

import hashlib
import json
import os
import struct
import sys
import zlib

PAGE = 4096
# migration message kinds (crates/ferry/src/migrate/mod.rs)
FILE_BEGIN, FILE_DATA, FILE_END, COMMIT, PAGES, KEEP = 3, 4, 5, 6, 11, 12


def put(out, target, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def image_files(img):
    """(name, bytes) of an image's files, inventory last, page files cut short."""
    files = []
    for name in sorted(os.listdir(img)):
        if name == "inventory.img" or name.startswith("."):
            continue
        with open(os.path.join(img, name), "rb") as f:
            data = f.read()
        if name.startswith("pages-"):
            data = data[: 2 * PAGE]
        files.append((name, data))
    with open(os.path.join(img, "inventory.img"), "rb") as f:
        files.append(("inventory.img", f.read()))
    return files


def archive(flags, files):
    out = bytes([flags])
    for name, data in files:
        n = name.encode()
        out += bytes([len(n)]) + n + struct.pack("<I", len(data)) + data
    return out


def msg(kind, payload):
    return struct.pack("<BI", kind, len(payload)) + payload


def stream(files, pre=b"", keep=b""):
    """The plaintext a migration source sends after HELLO: the files, then COMMIT."""
    out = pre
    inventory = b""
    for i, (name, data) in enumerate(files):
        if name == "inventory.img":
            inventory = data
            continue
        out += msg(FILE_BEGIN, struct.pack("<I", i) + name.encode())
        out += msg(FILE_DATA, struct.pack("<I", i) + data)
        out += msg(FILE_END, struct.pack("<IQI", i, len(data), zlib.crc32(data)))
    return b"\x01" + out + keep + msg(COMMIT, inventory)


def precopy(files, info):
    """A pre-copy stream: a page of the first mapping that has pages, sent while the process
    ran, and a KEEP that makes the destination put it into the image."""
    for p in info.get("processes", []):
        for v in (p.get("mm") or {}).get("vmas", []):
            if v.get("runs"):
                addr = v["start"]
                host = 7
                pre = msg(PAGES, struct.pack("<IQ", host, addr) + bytes(range(256)) * 16)
                keep = msg(KEEP, struct.pack("<IIQQ", host, p["pid"], addr, addr + PAGE))
                return stream(files, pre, keep)
    return None


def main():
    src, out = sys.argv[1], sys.argv[2]
    for entry in sorted(os.listdir(src)):
        img = os.path.join(src, entry)
        if not entry.startswith("img-") or not os.path.isdir(img):
            continue
        if not os.path.exists(os.path.join(img, "inventory.img")):
            continue
        files = image_files(img)
        for name, data in files:
            if not name.startswith("pages-"):
                put(out, "image_decode", data)
            elif data[:8] == b"FERRYPGZ":
                # the start of the zstd stream after the header page (cut: seeds stay small)
                put(out, "pages_zstd", data[PAGE : 2 * PAGE])
        # the whole image (flags: fix record headers and the inventory), and its migration stream
        put(out, "image_dir", archive(3, files))
        put(out, "frame", stream(files))
        js = img + ".json"
        if os.path.exists(js):
            with open(js) as f:
                s = precopy(files, json.load(f))
            if s:
                put(out, "frame", s)
    # an unauthenticated peer: the cleartext header and a first handshake message
    hello = b"FRYM\x00\x02\x00\x00" + struct.pack(">H", 32) + bytes(range(32))
    put(out, "frame", b"\x00" + hello)
    put(out, "frame", b"\x00" + hello + struct.pack(">H", 64) + bytes(64))


if __name__ == "__main__":
    main()
