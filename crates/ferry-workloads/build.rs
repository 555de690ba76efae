//! Compiles every `c/*.c` into an executable in `OUT_DIR` and generates `workloads.rs`: a table
//! of (name, absolute path) that `ferry_workloads::path` looks names up in, and one constant per
//! workload (`MEM_ANON`, ...).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// Workloads that keep AVX2/FMA state live get these extra flags (and only they: the others must
/// run on any x86-64).
const SIMD_WORKLOADS: &[&str] = &["fpu"];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let src_dir = manifest.join("c");
    println!("cargo:rerun-if-changed={}", src_dir.display());
    println!("cargo:rerun-if-changed={}", src_dir.join("common.h").display());

    let mut sources: Vec<PathBuf> = fs::read_dir(&src_dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", src_dir.display()))
        .map(|entry| entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", src_dir.display())).path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "c"))
        .collect();
    sources.sort();

    let mut table = String::from(
        "/// (workload name, absolute path of its executable)\npub const WORKLOADS: &[(&str, &str)] = &[\n",
    );
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let name =
            src.file_stem().and_then(|s| s.to_str()).unwrap_or_else(|| panic!("bad file name {}", src.display()));
        let exe = out.join(name);
        compile(src, &exe, SIMD_WORKLOADS.contains(&name));
        writeln!(table, "    ({name:?}, {:?}),", exe.display().to_string()).expect("writing to a String");
    }
    table.push_str("];\n");
    for src in &sources {
        let name = src.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let exe = out.join(name);
        writeln!(
            table,
            "/// Path of the `{name}` workload's executable.\npub const {}: &str = {:?};",
            name.to_uppercase(),
            exe.display().to_string()
        )
        .expect("writing to a String");
    }
    let table_path = out.join("workloads.rs");
    fs::write(&table_path, table).unwrap_or_else(|e| panic!("cannot write {}: {e}", table_path.display()));
}

fn compile(src: &Path, exe: &Path, simd: bool) {
    let mut cmd = cc::Build::new().opt_level(2).cargo_metadata(false).cargo_warnings(false).get_compiler().to_command();
    cmd.args(["-g", "-Wall", "-Wextra"]);
    if simd {
        cmd.args(["-mavx2", "-mfma"]);
    }
    cmd.arg("-o").arg(exe).arg(src).args(["-lrt", "-pthread"]);
    let output = cmd.output().unwrap_or_else(|e| panic!("cannot run the C compiler ({cmd:?}): {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stderr.lines() {
        println!("cargo:warning={line}");
    }
    if !output.status.success() {
        panic!("compiling {} failed ({}):\n{stderr}", src.display(), output.status);
    }
}
