//! `kubectl attach` and `kubectl run -i/-it --rm` against real containers: the
//! container's own streams kept by its shim (stdin as a pipe, or the terminal runc hands
//! over), several clients at once, `stdinOnce` closing stdin when the first client's
//! ends, a terminal sized by the client, the exit code `kubectl run` reports and the pod
//! it removes. (Every kubectl from 1.27 is driven through the same in `kubectl_versions.rs`.)

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, server_with_image};

fn pod(name: &str, script: &str, stdin: bool, stdin_once: bool, tty: bool) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: testbox:1.0\n    stdin: {stdin}\n    stdinOnce: {stdin_once}\n    tty: {tty}\n    command: [\"sh\", \"-c\", {script:?}]\n"
    )
}

#[test]
fn attach_reaches_a_containers_own_streams() {
    let s = server_with_image();
    let manifests = [
        pod("reader", "echo ready; while read l; do echo got $l; done; echo bye; exit 4", true, true, false),
        pod("ticker", "i=0; while true; do i=$((i+1)); echo tick $i; echo tock $i >&2; sleep 0.2; done", false, false, false),
        pod("shell", "exec sh", true, false, true),
    ];
    for m in &manifests {
        let out = s.k_stdin(&["apply", "-f", "-"], m);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let ok = s.kubectl(&["wait", "--for=condition=Ready", "pod/reader", "pod/ticker", "pod/shell", "--timeout=60s"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    // Two clients at once get the same live output, stdout and stderr apart.
    let follow = |args: &[&str]| {
        Command::new(common::kubectl_path("kubectl"))
            .args(args)
            .env("KUBECONFIG", s.kubeconfig())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut a = common::KillOnDrop(follow(&["attach", "ticker"]));
    let mut b = common::KillOnDrop(follow(&["attach", "ticker", "-c", "main"]));
    for c in [&mut a, &mut b] {
        let lines: Vec<String> = std::io::BufReader::new(c.0.stdout.take().unwrap()).lines().take(3).map(Result::unwrap).collect();
        assert!(lines.iter().all(|l| l.starts_with("tick ")), "{lines:?}");
        let numbers: Vec<u32> = lines.iter().map(|l| l[5..].parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "live lines in order: {numbers:?}");
        let err = std::io::BufReader::new(c.0.stderr.take().unwrap()).lines().map(Result::unwrap).find(|l| l.starts_with("tock "));
        assert!(err.is_some(), "stderr reaches the client on its own stream");
    }
    drop((a, b));

    // stdin: lines in, answers out; with stdinOnce the end of the client's stdin closes
    // the container's, the container ends, and so does the attach.
    let out = s.kubectl_input("kubectl", &["attach", "-i", "reader"], b"one\ntwo\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.ends_with("got one\ngot two\nbye\n"), "{stdout}");
    assert!(eventually(Duration::from_secs(20), || s.k(&["get", "pod", "reader", "-o", "jsonpath={.status.containerStatuses[0].state.terminated.exitCode}"])
        == "4"));
    // A container that ended cannot be attached to: refused before any upgrade.
    let out = s.kubectl(&["attach", "reader"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot attach a container in a completed pod"), "{}", String::from_utf8_lossy(&out.stderr));

    // A terminal: the client's size reaches it, what is typed runs, and leaving the shell
    // ends the container.
    let (screen, code) = s.kubectl_on_terminal("kubectl", "attach -it shell", "try pressing enter", "sleep 0.5; stty size; exit 3\n");
    assert!(screen.contains("33 91"), "{screen}");
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        eventually(Duration::from_secs(20), || s.k(&["get", "pod", "shell", "-o", "jsonpath={.status.containerStatuses[0].state.terminated.exitCode}"]) == "3")
    );
    // What the terminal showed is the container's log too.
    assert!(s.k(&["logs", "shell"]).contains("33 91"));
}

#[test]
fn kubectl_run_attaches_reports_the_exit_code_and_removes_the_pod() {
    let s = server_with_image();
    // No terminal: stdin piped through, the container's exit code becomes kubectl's.
    let out = s.kubectl_input(
        "kubectl",
        &["run", "once", "-i", "--rm", "--restart=Never", "--image=testbox:1.0", "--", "sh", "-c", "read l; echo got $l; exit 2"],
        b"hello\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("got hello"), "{stdout}");
    assert!(stdout.contains("pod \"once\" deleted"), "{stdout}");
    assert!(!s.kubectl(&["get", "pod", "once"]).status.success(), "--rm removed the pod");

    // A terminal, as people type it: `kubectl run -it --rm ... -- sh`.
    let (screen, code) =
        s.kubectl_on_terminal("kubectl", "run tty -it --rm --restart=Never --image=testbox:1.0 -- sh", "try pressing enter", "sleep 0.5; stty size; exit 5\n");
    assert!(screen.contains("33 91"), "{screen}");
    assert_eq!(code, Some(5), "{screen}");
    assert!(screen.contains("pod \"tty\" deleted"), "{screen}");
    assert!(eventually(Duration::from_secs(10), || !s.kubectl(&["get", "pod", "tty"]).status.success()));
}
