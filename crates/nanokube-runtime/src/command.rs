//! What a container runs, as kubelet and the CRI runtime decide it together: the
//! container's `command`/`args` with `$(VAR)` references expanded from its environment
//! (kubelet's `ExpandContainerCommandAndArgs`), combined with the image's `Entrypoint` and
//! `Cmd` (a `command` replaces both; `args` alone replace `Cmd`), and the environment: the
//! image's `Env`, then the container's variables in order, each expanded against those
//! before it.

/// `$(VAR)` expansion as Kubernetes does it: a defined variable is replaced, `$$` is a
/// literal `$` (so `$$(VAR)` stays `$(VAR)`), anything else is kept as written.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                b'(' => {
                    if let Some(end) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + end];
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => out.push_str(&input[i..i + 3 + end]),
                        }
                        i += 3 + end;
                        continue;
                    }
                }
                _ => {}
            }
        }
        // Copy one whole character (inputs are UTF-8).
        let ch = input[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

/// The environment a container starts with: the image's `KEY=VALUE` entries, then
/// `vars` (name, value as written) in order, each expanded against what precedes it and
/// replacing an earlier variable of the same name.
pub fn environment(image_env: &[String], vars: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = image_env.iter().filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect();
    for (name, raw) in vars {
        let value = {
            let lookup = |n: &str| env.iter().rev().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            expand(raw, &lookup)
        };
        match env.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => env.push((name.clone(), value)),
        }
    }
    env
}

/// The process's argv: `command` and `args` expanded against `env`, combined with the
/// image's entrypoint and cmd as the CRI runtime does. Empty when nothing is given.
pub fn argv(command: &[String], args: &[String], entrypoint: &[String], cmd: &[String], env: &[(String, String)]) -> Vec<String> {
    let lookup = |n: &str| env.iter().rev().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let command: Vec<String> = command.iter().map(|c| expand(c, &lookup)).collect();
    let args: Vec<String> = args.iter().map(|a| expand(a, &lookup)).collect();
    match (command.is_empty(), args.is_empty()) {
        (false, _) => command.into_iter().chain(args).collect(),
        (true, false) => entrypoint.iter().cloned().chain(args).collect(),
        (true, true) => entrypoint.iter().chain(cmd).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let env = |n: &str| match n {
            "A" => Some("1".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        for (given, want) in [
            ("$(A)", "1"),
            ("x$(A)y$(A)", "x1y1"),
            ("$$(A)", "$(A)"),
            ("$(MISSING)", "$(MISSING)"),
            ("$(EMPTY)z", "z"),
            ("$(A", "$(A"),
            ("$A", "$A"),
            ("é$(A)ü", "é1ü"),
            ("$$", "$"),
        ] {
            assert_eq!(expand(given, &env), want, "{given}");
        }
    }

    #[test]
    fn command_args_and_image_combine_as_the_runtime_does() {
        let env = vec![("GREETING".to_string(), "hi".to_string())];
        let (ep, cmd) = (s(&["/entry"]), s(&["default"]));
        assert_eq!(argv(&[], &[], &ep, &cmd, &env), s(&["/entry", "default"]));
        assert_eq!(argv(&[], &s(&["$(GREETING)"]), &ep, &cmd, &env), s(&["/entry", "hi"]));
        assert_eq!(argv(&s(&["sh", "-c"]), &[], &ep, &cmd, &env), s(&["sh", "-c"]));
        assert_eq!(argv(&s(&["echo"]), &s(&["$(GREETING)", "$$(GREETING)"]), &ep, &cmd, &env), s(&["echo", "hi", "$(GREETING)"]));
    }

    #[test]
    fn environment_overrides_and_refers_back() {
        let env = environment(&s(&["PATH=/bin", "HOME=/root"]), &[("PATH".into(), "/usr/bin:$(PATH)".into()), ("X".into(), "$(HOME)/x".into())]);
        assert_eq!(env, vec![("PATH".into(), "/usr/bin:/bin".into()), ("HOME".into(), "/root".into()), ("X".into(), "/root/x".into())]);
    }
}
