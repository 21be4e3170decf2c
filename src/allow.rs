//! What a locked-down `dos pull` (or `dos send`) accepts: an allow-list of
//! image patterns, and the command an ssh forced command was asked to run.
//!
//! With `command="dos pull --allow 'app:*'",restrict` in authorized_keys,
//! sshd runs that instead of what the pusher asked for, and puts the
//! pusher's command in SSH_ORIGINAL_COMMAND. It must be exactly
//! `dos pull IMAGE`; anything else is refused without running it. A key
//! locked to `dos send --allow …` is read-only the same way: it may only
//! run `dos send IMAGE` (a fetch), never `dos pull`.

use anyhow::{bail, Result};

use crate::reference::ImageRef;

/// Image name patterns: `*` matches any run of characters, `?` one. A
/// pattern without a tag matches every tag of that name. Matched against
/// the reference as given (`app:1`) and its canonical form
/// (`docker.io/library/app:1`) and docker's short form of it.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    patterns: Vec<String>,
}

impl AllowList {
    pub fn new(patterns: Vec<String>) -> AllowList {
        let patterns = patterns
            .into_iter()
            .map(|p| {
                let last = p.rsplit('/').next().unwrap_or(&p);
                if last.contains(':') || last.contains('@') || p.ends_with('*') {
                    p
                } else {
                    format!("{p}:*")
                }
            })
            .collect();
        AllowList { patterns }
    }

    /// No patterns: every image the pull was started for is allowed.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn allows(&self, image: &str) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        let Ok(r) = ImageRef::parse(image) else {
            return false;
        };
        let canonical = r.canonical();
        // The short form docker shows (`app:1` for docker.io/library/app:1).
        let familiar = canonical
            .strip_prefix("docker.io/library/")
            .or_else(|| canonical.strip_prefix("docker.io/"))
            .map(str::to_owned);
        let mut forms = vec![image.to_string(), canonical.clone()];
        forms.extend(familiar);
        if r.tag.is_none() && r.digest.is_none() {
            forms.push(format!("{image}:latest"));
        }
        self.patterns
            .iter()
            .any(|p| forms.iter().any(|f| glob(p.as_bytes(), f.as_bytes())))
    }

    pub fn describe(&self) -> String {
        self.patterns.join(", ")
    }
}

/// Repository patterns (`team/*`): which repositories of a hub's registry
/// a key may read or write. Matched against the repository path alone.
#[derive(Debug, Clone, Default)]
pub struct Repositories {
    patterns: Vec<String>,
}

impl Repositories {
    pub fn new(patterns: Vec<String>) -> Repositories {
        Repositories { patterns }
    }

    pub fn allows(&self, repository: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| glob(p.as_bytes(), repository.as_bytes()))
    }

    pub fn describe(&self) -> String {
        if self.patterns.is_empty() {
            "none".into()
        } else {
            self.patterns.join(", ")
        }
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative matching with one backtrack point: linear enough for names.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// What a forced command lets a key do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Receive images (`dos pull`): pushes to this host.
    Pull,
    /// Hand images out (`dos send`): fetches from this host.
    Send,
}

impl Verb {
    pub fn word(self) -> &'static str {
        match self {
            Verb::Pull => "pull",
            Verb::Send => "send",
        }
    }
}

/// The dos subcommand an SSH_ORIGINAL_COMMAND asks for, if it is dos.
pub fn verb_of(cmd: &str) -> Option<Verb> {
    let words = shlex::split(cmd)?;
    let mut it = words.iter().map(String::as_str);
    if it.next()?.rsplit('/').next() != Some("dos") {
        return None;
    }
    match it.next()? {
        "pull" => Some(Verb::Pull),
        "send" => Some(Verb::Send),
        _ => None,
    }
}

/// The image named by an ssh forced command's SSH_ORIGINAL_COMMAND, which
/// must be `dos VERB [-v…] IMAGE` (dos by name or path).
pub fn image_from_original_command(cmd: &str, verb: Verb) -> Result<String> {
    let refuse = || -> Result<String> {
        bail!(
            "this ssh key may only run `dos {} IMAGE`; refused to run: {cmd:?}",
            verb.word()
        )
    };
    if verb_of(cmd) != Some(verb) {
        return refuse();
    }
    let Some(words) = shlex::split(cmd) else {
        return refuse();
    };
    let it = words.iter().skip(2).map(String::as_str);
    let rest: Vec<&str> = it
        .filter(|w| !matches!(*w, "-v" | "-vv" | "--verbose" | "--"))
        .collect();
    match rest.as_slice() {
        [image] if !image.starts_with('-') => Ok(image.to_string()),
        _ => refuse(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let a = AllowList::new(vec!["app:*".into(), "registry.example.com/team/*".into()]);
        assert!(a.allows("app:1"));
        assert!(a.allows("app"));
        assert!(a.allows("docker.io/library/app:2"));
        assert!(!a.allows("other:1"));
        assert!(!a.allows("app2:1"));
        assert!(a.allows("registry.example.com/team/web:3"));
        assert!(!a.allows("registry.example.com/other/web:3"));
        let bare = AllowList::new(vec!["web".into()]);
        assert!(bare.allows("web:9") && !bare.allows("webx:9"));
        assert!(AllowList::default().allows("anything:1"));
        assert!(!a.allows("NOT A REF"));
    }

    #[test]
    fn repositories() {
        let r = Repositories::new(vec!["team/*".into()]);
        assert!(r.allows("team/app") && r.allows("team/a/b"));
        assert!(!r.allows("other/app") && !r.allows("team") && !r.allows("teamx/app"));
        assert!(!Repositories::default().allows("team/app"));
    }

    #[test]
    fn original_commands() {
        assert_eq!(
            image_from_original_command("dos pull app:1", Verb::Pull).unwrap(),
            "app:1"
        );
        assert!(
            image_from_original_command("/usr/local/bin/dos -v pull 'app:1'", Verb::Pull).is_err()
        );
        assert_eq!(
            image_from_original_command("/usr/local/bin/dos pull -v app:1", Verb::Pull).unwrap(),
            "app:1"
        );
        // Read-only keys: a send key can't push, a pull key can't fetch.
        assert_eq!(
            image_from_original_command("dos send app:1", Verb::Send).unwrap(),
            "app:1"
        );
        assert!(image_from_original_command("dos pull app:1", Verb::Send).is_err());
        assert!(image_from_original_command("dos send app:1", Verb::Pull).is_err());
        assert_eq!(verb_of("/opt/dos send x"), Some(Verb::Send));
        assert_eq!(verb_of("dosx send x"), None);
        for bad in [
            "echo pwned",
            "dos pull app:1; rm -rf /",
            "dos pull app:1 other:2",
            "dos pull --allow '*' app:1",
            "dos push app:1 sh",
            "sh -c 'dos pull app:1'",
            "dos pull",
            "dos pull 'unterminated",
        ] {
            assert!(
                image_from_original_command(bad, Verb::Pull).is_err(),
                "{bad}"
            );
            let send = bad.replace("dos pull", "dos send");
            assert!(
                image_from_original_command(&send, Verb::Send).is_err(),
                "{send}"
            );
        }
    }
}
