//! The C ABI as a C program uses it: `examples/chat.c` is compiled with the system's C
//! compiler against `include/npurt.h` and the cdylib cargo built beside this test, and
//! run: on the real SmolLM2 its two chat turns must stream exactly the answers the Rust
//! API gives for the same conversation; on vlm_tiny with an image attached it must give
//! the golden answer; and each bad argument must return its status with a message
//! naming the problem.

use npurt_models::ChatMessage;
use npurt_runtime::{GenerateOptions, LoadOptions, Runtime, Session};
use std::path::{Path, PathBuf};
use std::process::Command;

const SYSTEM: &str = "You are a helpful assistant.";
const QUESTIONS: [&str; 2] = ["What is the capital of France?", "And of Italy?"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The answers the Rust API gives, turn by turn, with chat.c's options, and the
/// positions a session holds after each (the prompt and all answer tokens but the last).
fn rust_answers(model_path: &Path) -> Vec<(String, usize)> {
    let model = Runtime::new()
        .load(
            model_path,
            LoadOptions {
                threads: Some(2),
                ctx: Some(1024),
                ..Default::default()
            },
        )
        .unwrap();
    let mut turns = vec![ChatMessage::new("system", SYSTEM)];
    let mut answers = Vec::new();
    for q in QUESTIONS {
        turns.push(ChatMessage::new("user", q));
        let ids = model.encode(&model.render_chat(&turns).unwrap()).unwrap();
        let mut s = Session::new(model.clone()).unwrap();
        let opts = GenerateOptions {
            max_tokens: 32,
            ..Default::default()
        };
        let g = s.generate(&ids, &opts, |_, _| true).unwrap();
        turns.push(ChatMessage::new("assistant", &g.text));
        answers.push((g.text, s.len()));
    }
    answers
}

/// chat.c compiled against the header and the cdylib cargo built beside this test.
fn compile_chat() -> PathBuf {
    // This test's executable sits in target/<profile>/deps, beside the cdylib.
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let lib = deps.join("libnpurt.so");
    assert!(lib.exists(), "{} was not built", lib.display());
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("npurt_chat_c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root().join("capi/include"))
        .arg(root().join("capi/examples/chat.c"))
        .arg("-L")
        .arg(&deps)
        .arg("-lnpurt")
        .arg(format!("-Wl,-rpath,{}", deps.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("running the C compiler `{cc}`: {e}"));
    assert!(
        out.status.success(),
        "chat.c did not compile:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// chat.c's stdout for `args`; it must succeed.
fn run_chat(args: &[&std::ffi::OsStr]) -> String {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let exe = EXE.get_or_init(compile_chat);
    let run = Command::new(exe).args(args).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout).to_string(),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(run.status.success(), "chat.c failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.starts_with(&format!("npurt {}\n", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    stdout
}

/// Turn `turn`'s streamed answer, which must be `want`, with `held` positions of the
/// context used after it.
fn check_turn(stdout: &str, turn: usize, want: &str, held: usize) {
    let start = format!("turn {turn}: ");
    let end = format!("\nanswer {turn}: {} bytes in ", want.len());
    let from = stdout
        .find(&start)
        .unwrap_or_else(|| panic!("no `{start}` in {stdout}"));
    let streamed = &stdout[from + start.len()..];
    let to = streamed
        .find(&end)
        .unwrap_or_else(|| panic!("no `{end}` in {stdout}"));
    assert_eq!(&streamed[..to], want, "turn {turn}");
    // The session held the whole conversation: the system message, the earlier turns
    // (reused, not fed again) and this one.
    let line = streamed[to + 1..].lines().next().unwrap();
    let context = format!("; context {held} of 1024");
    assert!(
        line.ends_with(&context),
        "turn {turn}: `{line}` does not end with `{context}`"
    );
}

/// The error lines every run ends with: each bad argument's status and a message
/// naming it (`image`: the missing image's, which depends on the model).
fn check_errors(stdout: &str, image: (u32, &str)) {
    for (line, status, names) in [
        ("missing model", 2, "/nonexistent/model.gguf"),
        ("unknown precision", 1, "w3a7"),
        ("missing image", image.0, image.1),
        ("null message", 1, "`message` is null"),
        ("negative temperature", 1, "temperature"),
        ("draft too long", 1, "max_draft"),
    ] {
        let l = stdout
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no `{line}` line in {stdout}"));
        assert!(
            l.starts_with(&format!("{line}: status {status}: ")) && l.contains(names),
            "{l}"
        );
    }
}

#[test]
fn a_c_program_chats_and_gets_typed_errors() {
    let model = root().join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        model.exists(),
        "{} is missing: run scripts/fetch-model.sh",
        model.display()
    );
    let mut args: Vec<&std::ffi::OsStr> = vec!["--system".as_ref(), SYSTEM.as_ref()];
    args.push(model.as_os_str());
    args.extend(QUESTIONS.iter().map(std::ffi::OsStr::new));
    let stdout = run_chat(&args);
    let answers = rust_answers(&model);
    assert!(answers[0].0.contains("Paris"), "{answers:?}");
    for (i, (want, held)) in answers.iter().enumerate() {
        check_turn(&stdout, i + 1, want, *held);
    }
    // A text model has no vision part.
    check_errors(&stdout, (1, "no vision part"));
}

/// An image attached through the C API: vlm_tiny at f32 gives the golden answer about
/// chelsea.png (README of ../shared/golden), and the session holds the 623-position
/// prompt and 15 of the 16 answer tokens.
#[test]
fn a_c_program_chats_about_an_image() {
    let dir = npurt_tests::vlm_tiny_dir(|_| {});
    let img = npurt_tests::golden("images/chelsea.png");
    let stdout = run_chat(&[
        "--precision".as_ref(),
        "f32".as_ref(),
        "--max-tokens".as_ref(),
        "16".as_ref(),
        dir.as_os_str(),
        "--image".as_ref(),
        img.as_os_str(),
        "Describe this image.".as_ref(),
    ]);
    let cfg = npurt_tests::read_json("vlm_tiny/config.json");
    let want = cfg["golden"]["greedy_16"]["text"].as_str().unwrap();
    check_turn(&stdout, 1, want, 623 + 15);
    check_errors(&stdout, (6, "/nonexistent/image.png"));
    std::fs::remove_dir_all(&dir).ok();
}
