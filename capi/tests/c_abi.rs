//! The C ABI as a C program uses it: `examples/chat.c` is compiled with the system's C
//! compiler against `include/npurt.h` and the cdylib cargo built beside this test, and
//! run on the real SmolLM2. Its two chat turns must stream exactly the answers the Rust
//! API gives for the same conversation, and each bad argument must return its status
//! with a message naming the problem.

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
                ctx: Some(512),
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

#[test]
fn a_c_program_chats_and_gets_typed_errors() {
    let model = root().join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        model.exists(),
        "{} is missing: run scripts/fetch-model.sh",
        model.display()
    );
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

    let run = Command::new(&exe)
        .arg(&model)
        .args(QUESTIONS)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(run.status.success(), "chat.c failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.starts_with(&format!("npurt {}\n", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );

    let answers = rust_answers(&model);
    assert!(answers[0].0.contains("Paris"), "{answers:?}");
    for (i, (want, held)) in answers.iter().enumerate() {
        let start = format!("turn {}: ", i + 1);
        // The session held the whole conversation: the system message, the earlier
        // turns (reused, not fed again) and this one.
        let end = format!("\nanswer {}: {} bytes in ", i + 1, want.len());
        let context = format!("; context {held} of 512\n");
        assert!(
            stdout.contains(&context),
            "turn {}: no `{context}` in {stdout}",
            i + 1
        );
        let from = stdout
            .find(&start)
            .unwrap_or_else(|| panic!("no `{start}` in {stdout}"));
        let streamed = &stdout[from + start.len()..];
        let to = streamed
            .find(&end)
            .unwrap_or_else(|| panic!("no `{end}` in {stdout}"));
        assert_eq!(&streamed[..to], want.as_str(), "turn {}", i + 1);
    }

    for (line, status, names) in [
        ("missing model", 2, "/nonexistent/model.gguf"),
        ("unknown precision", 1, "w3a7"),
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
