//! Running external commands (`ip`, `nft`, the SecureComm binaries) with errors that carry the
//! command line and its output.

use std::process::{Command, Output};

use crate::error::{NetsimError, Result};

/// The command line of `cmd`, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion; returns its output whatever the status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output().map_err(|source| NetsimError::Spawn {
        cmd: describe(cmd),
        source,
    })
}

/// Runs `cmd`; it must succeed. Returns its stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let o = output(cmd)?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(NetsimError::Command {
            cmd: describe(cmd),
            status: o.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&o.stderr).trim(),
                String::from_utf8_lossy(&o.stdout).trim()
            ),
        })
    }
}

/// `ip <args>` in the root namespace.
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// `ip -n <ns> <args>`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    run(Command::new("ip").arg("-n").arg(ns).args(args))
}

/// A command that runs `program` inside namespace `ns` (`ip netns exec`, which execs the
/// program, so the child's pid is the program's).
pub fn in_ns(ns: &str, program: &std::path::Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Loads an nftables ruleset into namespace `ns`.
pub fn nft_load(ns: &str, ruleset: &str) -> Result<()> {
    use std::io::Write;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| NetsimError::Spawn {
        cmd: describe(&cmd),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .map_err(|e| NetsimError::io(format!("writing nft rules for {ns}"), e))?;
    }
    let o = child
        .wait_with_output()
        .map_err(|e| NetsimError::io(format!("waiting for nft in {ns}"), e))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(NetsimError::Command {
            cmd: format!("{} <<{ruleset}", describe(&cmd)),
            status: o.status.to_string(),
            output: String::from_utf8_lossy(&o.stderr).trim().to_owned(),
        })
    }
}

/// `nft <args>` inside namespace `ns`.
pub fn nft(ns: &str, args: &[&str]) -> Result<String> {
    run(Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args))
}

/// Checks that we are root and `ip` and `nft` exist.
pub fn check_environment() -> Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_default();
    if uid != "0" {
        return Err(NetsimError::Environment(format!(
            "network namespaces need root; running as uid {uid:?}"
        )));
    }
    for (prog, arg) in [("ip", "-V"), ("nft", "--version")] {
        let ok = Command::new(prog)
            .arg(arg)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            return Err(NetsimError::Environment(format!(
                "`{prog}` is not available"
            )));
        }
    }
    Ok(())
}

/// Sends `signal` (e.g. "TERM", "KILL") to `pid`; errors are ignored (it may be gone).
pub fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .output();
}
