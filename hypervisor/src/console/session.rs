//! Console sessions: one-time login links that an authenticated API caller asks for, and the cookie
//! sessions they turn into.
//!
//! The API authenticates with client certificates, which a browser is not set up with. So the way in is
//! `dvs console` (or `POST /v1/console/login`): the API caller gets a **login link**, a random token valid
//! for [`LOGIN_TTL`] and once. Opening it gives the browser a **session**: a random id in an `HttpOnly`,
//! `Secure`, `SameSite=Strict` cookie, valid for [`SESSION_TTL`], with the role of the certificate that asked
//! for the link and a CSRF token that every form of the console carries. Tokens and ids are kept only as
//! their SHA-256, and both tables are bounded (the oldest entry goes first).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::auth::Role;

/// How long a login link is valid.
pub const LOGIN_TTL: Duration = Duration::from_secs(120);
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Login links not used yet, at most.
const MAX_LOGINS: usize = 64;
/// Sessions, at most.
const MAX_SESSIONS: usize = 256;

/// A message for the next page a session sees (the outcome of an action).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flash {
    /// True for success, false for an error.
    pub ok: bool,
    /// What to say (one line per entry).
    pub lines: Vec<String>,
}

/// A signed-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    /// What it may do.
    pub role: Role,
    /// The token its forms must carry.
    pub csrf: String,
    expires: Instant,
    flash: Option<Flash>,
}

#[derive(Default)]
struct Tables {
    /// sha256(token) → (role, expiry).
    logins: HashMap<String, (Role, Instant)>,
    /// sha256(session id) → session.
    sessions: HashMap<String, Session>,
}

/// The console's login links and sessions.
#[derive(Default)]
pub struct Sessions {
    tables: Mutex<Tables>,
}

fn lock(m: &Mutex<Tables>) -> std::sync::MutexGuard<'_, Tables> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// 32 random bytes from the system's generator, as hex.
fn random_token() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    // SystemRandom is getrandom(2); it fails only where no kernel generator exists at all.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        panic!("the system's random generator failed: no console token can be made");
    }
    hex::encode(b)
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Removes expired entries, then the ones expiring first until fewer than `max` are left.
fn bound<V>(map: &mut HashMap<String, V>, max: usize, expiry: impl Fn(&V) -> Instant) {
    let now = Instant::now();
    map.retain(|_, v| expiry(v) > now);
    while map.len() >= max {
        let Some(first) = map
            .iter()
            .min_by_key(|(_, v)| expiry(v))
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        map.remove(&first);
    }
}

/// True when `a` and `b` are equal, in a time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    /// A new login link token for a caller with `role`.
    pub fn issue_login(&self, role: Role) -> String {
        let token = random_token();
        let mut t = lock(&self.tables);
        bound(&mut t.logins, MAX_LOGINS, |&(_, e)| e);
        t.logins
            .insert(digest(&token), (role, Instant::now() + LOGIN_TTL));
        token
    }

    /// Uses up login `token`: a new session id and its session, or None when the token is unknown, used or
    /// expired.
    pub fn redeem(&self, token: &str) -> Option<(String, Session)> {
        let mut t = lock(&self.tables);
        let (role, expires) = t.logins.remove(&digest(token))?;
        if expires <= Instant::now() {
            return None;
        }
        let id = random_token();
        let session = Session {
            role,
            csrf: random_token(),
            expires: Instant::now() + SESSION_TTL,
            flash: None,
        };
        bound(&mut t.sessions, MAX_SESSIONS, |s| s.expires);
        t.sessions.insert(digest(&id), session.clone());
        Some((id, session))
    }

    /// The live session with id `id`.
    pub fn get(&self, id: &str) -> Option<Session> {
        let t = lock(&self.tables);
        t.sessions
            .get(&digest(id))
            .filter(|s| s.expires > Instant::now())
            .cloned()
    }

    /// Ends session `id` (sign out).
    pub fn end(&self, id: &str) {
        lock(&self.tables).sessions.remove(&digest(id));
    }

    /// Keeps `flash` for the next page session `id` sees.
    pub fn set_flash(&self, id: &str, flash: Flash) {
        if let Some(s) = lock(&self.tables).sessions.get_mut(&digest(id)) {
            s.flash = Some(flash);
        }
    }

    /// Takes session `id`'s message, if it has one.
    pub fn take_flash(&self, id: &str) -> Option<Flash> {
        lock(&self.tables)
            .sessions
            .get_mut(&digest(id))
            .and_then(|s| s.flash.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_link_works_once() {
        let s = Sessions::default();
        let token = s.issue_login(Role::ReadOnly);
        let (id, session) = s.redeem(&token).expect("first use");
        assert_eq!(session.role, Role::ReadOnly);
        assert!(s.redeem(&token).is_none(), "second use");
        assert_eq!(s.get(&id).map(|s| s.csrf), Some(session.csrf));
        assert!(s.get("not-a-session").is_none());
        s.end(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn tables_stay_bounded() {
        let s = Sessions::default();
        let tokens: Vec<String> = (0..MAX_LOGINS * 2)
            .map(|_| s.issue_login(Role::Admin))
            .collect();
        assert!(lock(&s.tables).logins.len() <= MAX_LOGINS);
        // The newest links still work.
        assert!(s.redeem(tokens.last().expect("made")).is_some());
        for _ in 0..MAX_SESSIONS * 2 {
            let t = s.issue_login(Role::Admin);
            s.redeem(&t).expect("fresh link");
        }
        assert!(lock(&s.tables).sessions.len() <= MAX_SESSIONS);
    }

    #[test]
    fn flash_is_shown_once() {
        let s = Sessions::default();
        let (id, _) = s.redeem(&s.issue_login(Role::Admin)).expect("link");
        s.set_flash(
            &id,
            Flash {
                ok: true,
                lines: vec!["stopped web".into()],
            },
        );
        assert_eq!(
            s.take_flash(&id).map(|f| f.lines),
            Some(vec!["stopped web".to_string()])
        );
        assert_eq!(s.take_flash(&id), None);
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
