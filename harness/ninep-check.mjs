// ninep-check.mjs loads a v86 9p root tree (fs.json + blob directory) into a
// real V86 emulator under Node and reports what v86 sees at the given paths,
// so Go tests can check that internal/image/ninep writes a tree v86 accepts.
//
// Usage: node harness/ninep-check.mjs <tree-dir> <guest-path>...
//
// <tree-dir> holds fs.json and the blob directory "blobs/". The output is one
// JSON object on stdout, keyed by guest path:
//
//	{"/etc/hostname": {"mode": 33188, "uid": 0, "gid": 0, "mtime": 0,
//	                   "size": 5, "sha256": "…"},
//	 "/bin/sh": {"mode": 41471, …, "target": "busybox"},
//	 "/missing": {"error": "not found"}}
//
// Regular files are read with emulator.read_file, which fetches the blob
// (decompressing .bin.zst) exactly as the guest's first open would. v86's
// read_file does not follow symlinks, so for a symlink the target is reported
// instead and the caller resolves it. The emulator is never started: loading
// fs.json and reading files needs no BIOS and no CPU cycles.

import { createHash } from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { V86 } from "v86";

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

async function main(argv) {
    if (argv.length < 1) {
        throw new Error("usage: ninep-check.mjs <tree-dir> <guest-path>...");
    }
    const treeDir = path.resolve(argv[0]);
    const paths = argv.slice(1);
    const here = path.dirname(fileURLToPath(import.meta.url));

    const emulator = new V86({
        wasm_path: path.join(here, "node_modules/v86/build/v86.wasm"),
        // Smallest memory that keeps v86's allocator happy; nothing runs.
        memory_size: 16 * 1024 * 1024,
        vga_memory_size: 2 * 1024 * 1024,
        filesystem: {
            basefs: path.join(treeDir, "fs.json"),
            baseurl: path.join(treeDir, "blobs") + "/",
        },
        autostart: false,
        disable_keyboard: true,
        disable_mouse: true,
        disable_speaker: true,
    });

    try {
        await new Promise((resolve) => emulator.add_listener("emulator-loaded", resolve));
        const result = {};
        for (const p of paths) {
            result[p] = await inspect(emulator, p);
        }
        process.stdout.write(JSON.stringify(result) + "\n");
    } finally {
        await emulator.destroy();
    }
}

async function inspect(emulator, p) {
    const fs = emulator.fs9p;
    const found = fs.SearchPath(p);
    if (found.id === -1) {
        return { error: "not found" };
    }
    const inode = fs.GetInode(found.id);
    const info = {
        mode: inode.mode,
        uid: inode.uid,
        gid: inode.gid,
        mtime: inode.mtime,
        size: inode.size,
    };
    switch (inode.mode & S_IFMT) {
    case S_IFLNK:
        info.target = inode.symlink;
        break;
    case S_IFREG: {
        const data = await emulator.read_file(p);
        info.read = data.length;
        info.sha256 = createHash("sha256").update(data).digest("hex");
        break;
    }
    }
    return info;
}

main(process.argv.slice(2)).then(
    () => process.exit(0),
    (err) => {
        process.stderr.write(`ninep-check: ${err && err.stack ? err.stack : err}\n`);
        process.exit(1);
    },
);
