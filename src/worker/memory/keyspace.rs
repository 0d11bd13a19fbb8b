//! Redis in memory, for the store twin: a keyspace of strings and hashes with TTLs, and the
//! store's own Lua scripts (src/store/job.rs, src/store/renewal.rs) run on it as Redis runs them,
//! so a bug in a script's text is a bug in the simulation too.
//!
//! As Redis: Lua 5.1 (vendored, through mlua), `KEYS` and `ARGV` as tables of strings,
//! `redis.call` raising a command's error and `redis.pcall` returning it as `{err=…}`, and
//! Redis's conversions both ways (a nil reply is `false`; a Lua number becomes an integer reply,
//! truncated; `false` a nil reply; a table an array up to its first nil, or a status or error
//! reply with `ok` / `err`). A script runs atomically: nothing else touches the keyspace meanwhile.
//! TTLs and `TIME` run on tokio's clock, so under the simulation's paused time a key expires in
//! virtual time and a seed still replays the same run. Only the commands the scripts call.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use mlua::{Function, Lua, MultiValue, Value};
use tokio::time::Instant;

/// What `TIME` reads when the keyspace is made: 2025-11-30T00:00:00Z, in ms.
const EPOCH_MS: u64 = 1_764_460_800_000;

/// A Redis reply, as the client reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Nil,
    Integer(i64),
    Bulk(String),
    Status(String),
    Error(String),
    Array(Vec<Reply>),
}

impl Reply {
    /// A bulk string's text, or the empty string for anything else.
    pub fn text(&self) -> &str {
        match self {
            Reply::Bulk(text) | Reply::Status(text) => text,
            _ => "",
        }
    }

    /// An integer reply's value, 0 for anything else.
    pub fn integer(&self) -> i64 {
        match self {
            Reply::Integer(n) => *n,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone)]
enum Data {
    String(String),
    Hash(BTreeMap<String, String>),
}

#[derive(Debug, Clone)]
struct Entry {
    data: Data,
    expires: Option<Instant>,
}

/// The keys of one Redis.
#[derive(Debug, Clone)]
pub struct Keyspace {
    entries: BTreeMap<String, Entry>,
    /// When `TIME` read `EPOCH_MS`.
    start: Instant,
    /// The writes a failover to a lagging replica would undo, when kept.
    undo: Option<UndoLog>,
}

impl Default for Keyspace {
    fn default() -> Self {
        Keyspace {
            entries: BTreeMap::new(),
            start: Instant::now(),
            undo: None,
        }
    }
}

/// Every write of the last `keep`, as the key was before it: what a replica that missed those
/// writes (asynchronous replication) still holds. Bounded by time: older writes are on the
/// replica already and are forgotten here.
#[derive(Debug, Clone)]
struct UndoLog {
    keep: Duration,
    /// (when, key, the key before the write), oldest first.
    writes: VecDeque<(Instant, String, Option<Entry>)>,
}

/// The commands that write, and where their keys are among their arguments.
fn written_keys(args: &[String]) -> &[String] {
    let Some(name) = args.first() else {
        return &[];
    };
    match name.to_ascii_uppercase().as_str() {
        "SET" | "EXPIRE" | "PEXPIRE" | "PERSIST" | "HSET" | "HSETNX" | "HINCRBY" | "HDEL" => {
            args.get(1..2).unwrap_or_default()
        }
        "DEL" => &args[1..],
        _ => &[],
    }
}

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";

impl Keyspace {
    /// Every key whose TTL has not passed at `now`.
    pub fn live_keys(&self, now: Instant) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(move |(_, entry)| entry.expires.is_none_or(|at| at > now))
            .map(|(key, _)| key.as_str())
    }

    /// Deletes every key `doomed` names (data loss, a failover that lost them).
    pub fn delete_where(&mut self, doomed: impl Fn(&str) -> bool) {
        self.entries.retain(|key, _| !doomed(key));
    }

    /// What `TIME` reads at `now`, in ms.
    pub fn now_ms(&self, now: Instant) -> u64 {
        EPOCH_MS.saturating_add(
            u64::try_from(now.duration_since(self.start).as_millis()).unwrap_or(u64::MAX),
        )
    }

    /// Forgets every key (and every write a failover could undo: there is nothing left to undo).
    pub fn clear(&mut self) {
        self.entries.clear();
        if let Some(undo) = self.undo.as_mut() {
            undo.writes.clear();
        }
    }

    /// From now on, keeps what each write of the last `keep` changed, so that
    /// [`Keyspace::undo_since`] can take them back.
    pub fn keep_undo_log(&mut self, keep: Duration) {
        self.undo = Some(UndoLog {
            keep,
            writes: VecDeque::new(),
        });
    }

    /// Undoes every write made at `since` or later, newest first, as a failover to a replica
    /// that had not received them: each key goes back to what it was (absent, another value, its
    /// old expiry). Only as far back as the undo log keeps. Returns the keys put back.
    pub fn undo_since(&mut self, since: Instant) -> BTreeSet<String> {
        let mut restored = BTreeSet::new();
        let Some(undo) = self.undo.as_mut() else {
            return restored;
        };
        while undo.writes.back().is_some_and(|(at, _, _)| *at >= since) {
            let Some((_, key, before)) = undo.writes.pop_back() else {
                break;
            };
            match before {
                Some(entry) => self.entries.insert(key.clone(), entry),
                None => self.entries.remove(&key),
            };
            restored.insert(key);
        }
        restored
    }

    /// Deletes one key that has an expiry, the `pick`-th of them (modulo their number), as
    /// Redis's `volatile-*` eviction or an expiry come early would. Returns its name.
    pub fn evict_one(&mut self, now: Instant, pick: u64) -> Option<String> {
        let volatile: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.expires.is_some_and(|at| at > now))
            .map(|(key, _)| key.clone())
            .collect();
        let count = u64::try_from(volatile.len()).ok().filter(|n| *n > 0)?;
        let key = volatile.get(usize::try_from(pick % count).ok()?)?.clone();
        self.remember_before(now, std::slice::from_ref(&key));
        self.entries.remove(&key);
        Some(key)
    }

    /// Keeps `keys` as they are now in the undo log, before a write at `now` changes them.
    fn remember_before(&mut self, now: Instant, keys: &[String]) {
        let Some(undo) = self.undo.as_mut() else {
            return;
        };
        while undo
            .writes
            .front()
            .is_some_and(|(at, _, _)| *at + undo.keep < now)
        {
            undo.writes.pop_front();
        }
        for key in keys {
            undo.writes
                .push_back((now, key.clone(), self.entries.get(key).cloned()));
        }
    }

    /// One command, as a client sends it outside a script.
    pub fn command(&mut self, now: Instant, args: &[&str]) -> Reply {
        let owned: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
        self.execute(now, &owned)
    }

    /// Runs a script's `source` with `keys` and `args`, atomically, and returns its reply (a
    /// script's error, from Lua or from a command it raised, as an error reply).
    pub fn eval(&mut self, now: Instant, source: &str, keys: &[String], args: &[String]) -> Reply {
        let space = std::mem::take(self);
        let (space, reply) = SCRIPTING.with(|cell| {
            let mut scripting = cell.borrow_mut();
            if scripting.is_none() {
                match Scripting::new() {
                    Ok(made) => *scripting = Some(made),
                    Err(error) => return (space, Reply::Error(error.to_string())),
                }
            }
            match scripting.as_mut() {
                Some(scripting) => scripting.run(Running { space, now }, source, keys, args),
                None => (space, Reply::Error("no Lua state".to_owned())),
            }
        });
        *self = space;
        reply
    }

    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self
            .entries
            .get(key)
            .is_some_and(|entry| entry.expires.is_some_and(|at| at <= now))
        {
            self.entries.remove(key);
        }
        self.entries.get_mut(key)
    }

    fn hash(
        &mut self,
        key: &str,
        now: Instant,
    ) -> Result<Option<&mut BTreeMap<String, String>>, Reply> {
        match self.live(key, now) {
            None => Ok(None),
            Some(Entry {
                data: Data::Hash(hash),
                ..
            }) => Ok(Some(hash)),
            Some(_) => Err(Reply::Error(WRONGTYPE.into())),
        }
    }

    fn hash_or_new(
        &mut self,
        key: &str,
        now: Instant,
    ) -> Result<&mut BTreeMap<String, String>, Reply> {
        if self.hash(key, now)?.is_none() {
            self.entries.insert(
                key.to_owned(),
                Entry {
                    data: Data::Hash(BTreeMap::new()),
                    expires: None,
                },
            );
        }
        match self.entries.get_mut(key).map(|entry| &mut entry.data) {
            Some(Data::Hash(hash)) => Ok(hash),
            _ => Err(Reply::Error(WRONGTYPE.into())),
        }
    }

    /// One command with its arguments; the name in any case.
    fn execute(&mut self, now: Instant, args: &[String]) -> Reply {
        if self.undo.is_some() {
            self.remember_before(now, written_keys(args));
        }
        match self.dispatch(now, args) {
            Ok(reply) | Err(reply) => reply,
        }
    }

    fn dispatch(&mut self, now: Instant, args: &[String]) -> Result<Reply, Reply> {
        let Some(name) = args.first() else {
            return Err(Reply::Error("ERR wrong number of arguments".into()));
        };
        let name = name.to_ascii_uppercase();
        let rest = &args[1..];
        let arity = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(Reply::Error(format!(
                    "ERR wrong number of arguments for '{}' command",
                    name.to_ascii_lowercase()
                )))
            }
        };
        match name.as_str() {
            "GET" => {
                arity(rest.len() == 1)?;
                match self.live(&rest[0], now) {
                    None => Ok(Reply::Nil),
                    Some(Entry {
                        data: Data::String(value),
                        ..
                    }) => Ok(Reply::Bulk(value.clone())),
                    Some(_) => Err(Reply::Error(WRONGTYPE.into())),
                }
            }
            "SET" => {
                arity(rest.len() >= 2)?;
                self.set(now, &rest[0], &rest[1], &rest[2..])
            }
            "DEL" | "EXISTS" => {
                arity(!rest.is_empty())?;
                let mut count = 0;
                for key in rest {
                    if self.live(key, now).is_some() {
                        count += 1;
                        if name == "DEL" {
                            self.entries.remove(key.as_str());
                        }
                    }
                }
                Ok(Reply::Integer(count))
            }
            "TYPE" => {
                arity(rest.len() == 1)?;
                Ok(Reply::Status(
                    match self.live(&rest[0], now).map(|e| &e.data) {
                        None => "none",
                        Some(Data::String(_)) => "string",
                        Some(Data::Hash(_)) => "hash",
                    }
                    .into(),
                ))
            }
            "EXPIRE" | "PEXPIRE" => {
                arity(rest.len() == 2)?;
                let amount = integer(&rest[1])?;
                let unit = if name == "EXPIRE" { 1_000 } else { 1 };
                if self.live(&rest[0], now).is_none() {
                    return Ok(Reply::Integer(0));
                }
                if amount <= 0 {
                    self.entries.remove(rest[0].as_str());
                } else if let Some(entry) = self.entries.get_mut(rest[0].as_str()) {
                    let ms = u64::try_from(amount).unwrap_or(0).saturating_mul(unit);
                    entry.expires = Some(now + Duration::from_millis(ms));
                }
                Ok(Reply::Integer(1))
            }
            "PERSIST" => {
                arity(rest.len() == 1)?;
                Ok(Reply::Integer(match self.live(&rest[0], now) {
                    Some(entry) if entry.expires.is_some() => {
                        entry.expires = None;
                        1
                    }
                    _ => 0,
                }))
            }
            "PTTL" | "TTL" => {
                arity(rest.len() == 1)?;
                let divisor = if name == "TTL" { 1_000 } else { 1 };
                Ok(Reply::Integer(match self.live(&rest[0], now) {
                    None => -2,
                    Some(Entry { expires: None, .. }) => -1,
                    Some(Entry {
                        expires: Some(at), ..
                    }) => {
                        let left =
                            i64::try_from(at.duration_since(now).as_millis()).unwrap_or(i64::MAX);
                        // TTL rounds to the nearest second, as Redis does.
                        if divisor == 1 {
                            left
                        } else {
                            (left + 500) / 1_000
                        }
                    }
                }))
            }
            "TIME" => {
                arity(rest.is_empty())?;
                let micros = EPOCH_MS.saturating_mul(1_000).saturating_add(
                    u64::try_from(now.duration_since(self.start).as_micros()).unwrap_or(u64::MAX),
                );
                Ok(Reply::Array(vec![
                    Reply::Bulk((micros / 1_000_000).to_string()),
                    Reply::Bulk((micros % 1_000_000).to_string()),
                ]))
            }
            "HGET" => {
                arity(rest.len() == 2)?;
                Ok(self
                    .hash(&rest[0], now)?
                    .and_then(|hash| hash.get(&rest[1]).cloned())
                    .map_or(Reply::Nil, Reply::Bulk))
            }
            "HEXISTS" => {
                arity(rest.len() == 2)?;
                let found = self
                    .hash(&rest[0], now)?
                    .is_some_and(|hash| hash.contains_key(&rest[1]));
                Ok(Reply::Integer(i64::from(found)))
            }
            "HMGET" => {
                arity(rest.len() >= 2)?;
                let hash = self.hash(&rest[0], now)?;
                Ok(Reply::Array(
                    rest[1..]
                        .iter()
                        .map(|field| {
                            hash.as_ref()
                                .and_then(|hash| hash.get(field).cloned())
                                .map_or(Reply::Nil, Reply::Bulk)
                        })
                        .collect(),
                ))
            }
            "HGETALL" => {
                arity(rest.len() == 1)?;
                Ok(Reply::Array(
                    self.hash(&rest[0], now)?
                        .map(|hash| {
                            hash.iter()
                                .flat_map(|(f, v)| [Reply::Bulk(f.clone()), Reply::Bulk(v.clone())])
                                .collect()
                        })
                        .unwrap_or_default(),
                ))
            }
            "HSET" => {
                arity(rest.len() >= 3 && rest.len() % 2 == 1)?;
                let hash = self.hash_or_new(&rest[0], now)?;
                let mut added = 0;
                for pair in rest[1..].chunks(2) {
                    if hash.insert(pair[0].clone(), pair[1].clone()).is_none() {
                        added += 1;
                    }
                }
                Ok(Reply::Integer(added))
            }
            "HSETNX" => {
                arity(rest.len() == 3)?;
                let hash = self.hash_or_new(&rest[0], now)?;
                if hash.contains_key(&rest[1]) {
                    return Ok(Reply::Integer(0));
                }
                hash.insert(rest[1].clone(), rest[2].clone());
                Ok(Reply::Integer(1))
            }
            "HINCRBY" => {
                arity(rest.len() == 3)?;
                let by = integer(&rest[2])?;
                let hash = self.hash_or_new(&rest[0], now)?;
                let current = match hash.get(&rest[1]) {
                    None => 0,
                    Some(value) => value
                        .parse::<i64>()
                        .map_err(|_| Reply::Error("ERR hash value is not an integer".into()))?,
                };
                let next = current.checked_add(by).ok_or_else(|| {
                    Reply::Error("ERR increment or decrement would overflow".into())
                })?;
                hash.insert(rest[1].clone(), next.to_string());
                Ok(Reply::Integer(next))
            }
            "HDEL" => {
                arity(rest.len() >= 2)?;
                let mut removed = 0;
                if let Some(hash) = self.hash(&rest[0], now)? {
                    for field in &rest[1..] {
                        if hash.remove(field).is_some() {
                            removed += 1;
                        }
                    }
                    if hash.is_empty() {
                        self.entries.remove(rest[0].as_str());
                    }
                }
                Ok(Reply::Integer(removed))
            }
            other => Err(Reply::Error(format!(
                "ERR unknown command '{}', the store twin has only the scripts' commands",
                other.to_ascii_lowercase()
            ))),
        }
    }

    /// `SET key value [NX | XX] [EX s | PX ms] [KEEPTTL]`.
    fn set(
        &mut self,
        now: Instant,
        key: &str,
        value: &str,
        options: &[String],
    ) -> Result<Reply, Reply> {
        let (mut nx, mut xx, mut keep_ttl) = (false, false, false);
        let mut expires = None;
        let mut options = options.iter();
        while let Some(option) = options.next() {
            match option.to_ascii_uppercase().as_str() {
                "NX" => nx = true,
                "XX" => xx = true,
                "KEEPTTL" => keep_ttl = true,
                unit @ ("EX" | "PX") => {
                    let amount =
                        integer(options.next().ok_or_else(|| Reply::Error(SYNTAX.into()))?)?;
                    if amount <= 0 {
                        return Err(Reply::Error(
                            "ERR invalid expire time in 'set' command".into(),
                        ));
                    }
                    let ms = u64::try_from(amount)
                        .unwrap_or(0)
                        .saturating_mul(if unit == "EX" { 1_000 } else { 1 });
                    expires = Some(now + Duration::from_millis(ms));
                }
                _ => return Err(Reply::Error(SYNTAX.into())),
            }
        }
        if (nx && xx) || (keep_ttl && expires.is_some()) {
            return Err(Reply::Error(SYNTAX.into()));
        }
        let exists = self.live(key, now);
        let old_ttl = exists.as_ref().and_then(|entry| entry.expires);
        let exists = exists.is_some();
        if (nx && exists) || (xx && !exists) {
            return Ok(Reply::Nil);
        }
        self.entries.insert(
            key.to_owned(),
            Entry {
                data: Data::String(value.to_owned()),
                expires: if keep_ttl { old_ttl } else { expires },
            },
        );
        Ok(Reply::Status("OK".into()))
    }
}

fn integer(text: &str) -> Result<i64, Reply> {
    text.parse().map_err(|_| Reply::Error(NOT_INTEGER.into()))
}

/// The keyspace a script runs on, lent to the interpreter for the script's run.
struct Running {
    space: Keyspace,
    now: Instant,
}

/// One Lua interpreter per thread (each thread of the simulation runs its schedules one at a
/// time), with each script compiled once.
/// It is not `Send`, so it lives here rather than in the store, which tasks share.
struct Scripting {
    lua: Lua,
    compiled: HashMap<String, Function>,
}

thread_local! {
    static SCRIPTING: RefCell<Option<Scripting>> = const { RefCell::new(None) };
}

impl Scripting {
    /// A Lua state with `redis.call` and `redis.pcall` bound to the keyspace. Fails only when
    /// Lua cannot allocate; the caller answers that as a script error.
    fn new() -> mlua::Result<Self> {
        let lua = Lua::new();
        let redis = lua.create_table()?;
        let call = lua.create_function(|lua, args: MultiValue| {
            let reply = command_from_lua(lua, args)?;
            if let Reply::Error(message) = reply {
                return Err(mlua::Error::RuntimeError(message));
            }
            to_lua(lua, reply)
        })?;
        let pcall = lua.create_function(|lua, args: MultiValue| {
            let reply = match command_from_lua(lua, args) {
                Ok(reply) => reply,
                Err(error) => Reply::Error(error.to_string()),
            };
            to_lua(lua, reply)
        })?;
        redis.set("call", call)?;
        redis.set("pcall", pcall)?;
        lua.globals().set("redis", redis)?;
        Ok(Scripting {
            lua,
            compiled: HashMap::new(),
        })
    }

    fn run(
        &mut self,
        running: Running,
        source: &str,
        keys: &[String],
        args: &[String],
    ) -> (Keyspace, Reply) {
        self.lua.set_app_data(running);
        let reply = self.call(source, keys, args).unwrap_or_else(|error| {
            Reply::Error(match error {
                mlua::Error::CallbackError { cause, .. } => cause.to_string(),
                other => other.to_string(),
            })
        });
        // Lent just above and only borrowed by the commands, never taken: it is still there.
        let running = self
            .lua
            .remove_app_data::<Running>()
            .expect("the keyspace lent to the script");
        (running.space, reply)
    }

    fn call(&mut self, source: &str, keys: &[String], args: &[String]) -> mlua::Result<Reply> {
        let lua = &self.lua;
        let globals = lua.globals();
        globals.set(
            "KEYS",
            lua.create_sequence_from(keys.iter().map(String::as_str))?,
        )?;
        globals.set(
            "ARGV",
            lua.create_sequence_from(args.iter().map(String::as_str))?,
        )?;
        let function = match self.compiled.get(source) {
            Some(function) => function.clone(),
            None => {
                let function = lua.load(source).set_name("=user_script").into_function()?;
                self.compiled.insert(source.to_owned(), function.clone());
                function
            }
        };
        let value: Value = function.call(())?;
        Ok(from_lua(value))
    }
}

/// `redis.call(...)`'s arguments as a command, run on the lent keyspace.
fn command_from_lua(lua: &Lua, args: MultiValue) -> mlua::Result<Reply> {
    let mut command = Vec::with_capacity(args.len());
    for arg in args {
        command.push(match arg {
            Value::String(text) => text.to_string_lossy(),
            Value::Integer(n) => n.to_string(),
            Value::Number(n) => number_text(n),
            _ => {
                return Err(mlua::Error::RuntimeError(
                    "Lua redis lib command arguments must be strings or integers".into(),
                ));
            }
        });
    }
    if command.is_empty() {
        return Err(mlua::Error::RuntimeError(
            "Please specify at least one argument for this redis lib call".into(),
        ));
    }
    let mut running = lua
        .app_data_mut::<Running>()
        .ok_or_else(|| mlua::Error::RuntimeError("no keyspace lent".into()))?;
    let now = running.now;
    Ok(running.space.execute(now, &command))
}

/// A Lua number as `tostring` prints it (`%.14g`): integers without a fraction.
fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// A reply as a script sees it: nil is `false`, a status `{ok=…}`, an error `{err=…}`.
fn to_lua(lua: &Lua, reply: Reply) -> mlua::Result<Value> {
    Ok(match reply {
        Reply::Nil => Value::Boolean(false),
        Reply::Integer(n) => Value::Integer(n),
        Reply::Bulk(text) => Value::String(lua.create_string(text)?),
        Reply::Status(text) => {
            let table = lua.create_table()?;
            table.set("ok", text)?;
            Value::Table(table)
        }
        Reply::Error(text) => {
            let table = lua.create_table()?;
            table.set("err", text)?;
            Value::Table(table)
        }
        Reply::Array(items) => {
            let table = lua.create_table()?;
            for (index, item) in items.into_iter().enumerate() {
                table.raw_set(index + 1, to_lua(lua, item)?)?;
            }
            Value::Table(table)
        }
    })
}

/// A script's return value as Redis replies it.
fn from_lua(value: Value) -> Reply {
    match value {
        Value::Nil | Value::Boolean(false) => Reply::Nil,
        Value::Boolean(true) => Reply::Integer(1),
        Value::Integer(n) => Reply::Integer(n),
        // Redis truncates a Lua number to an integer reply.
        Value::Number(n) => Reply::Integer(n as i64),
        Value::String(text) => Reply::Bulk(text.to_string_lossy()),
        Value::Table(table) => {
            if let Ok(Value::String(err)) = table.raw_get::<Value>("err") {
                return Reply::Error(err.to_string_lossy());
            }
            if let Ok(Value::String(ok)) = table.raw_get::<Value>("ok") {
                return Reply::Status(ok.to_string_lossy());
            }
            let mut items = Vec::new();
            for index in 1.. {
                match table.raw_get::<Value>(index) {
                    Ok(Value::Nil) | Err(_) => break,
                    Ok(item) => items.push(from_lua(item)),
                }
            }
            Reply::Array(items)
        }
        _ => Reply::Nil,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|&s| s.to_owned()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_script_sees_redis_replies_and_its_answer_is_converted_as_redis_does() {
        let mut space = Keyspace::default();
        let now = Instant::now();
        let script = r#"
local missing = redis.call('GET', KEYS[1])
local set = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
local again = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
local failed = redis.pcall('HGET', KEYS[1], 'f')
return {missing == false and 1 or 0, set.ok, again == false and 1 or 0, failed.err ~= nil and 1 or 0, 3.9, nil, 'after nil'}
"#;
        let reply = space.eval(now, script, &strings(&["k"]), &strings(&["v", "1000"]));
        assert_eq!(
            reply,
            Reply::Array(vec![
                Reply::Integer(1),
                Reply::Bulk("OK".into()),
                Reply::Integer(1),
                Reply::Integer(1),
                Reply::Integer(3),
            ])
        );
        assert_eq!(space.command(now, &["PTTL", "k"]), Reply::Integer(1_000));
        assert_eq!(
            space.command(now + Duration::from_millis(1_000), &["GET", "k"]),
            Reply::Nil
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_raised_command_error_ends_the_script_with_it() {
        let mut space = Keyspace::default();
        let now = Instant::now();
        space.command(now, &["HSET", "h", "f", "1"]);
        let reply = space.eval(
            now,
            "return redis.call('GET', KEYS[1])",
            &strings(&["h"]),
            &[],
        );
        assert!(
            matches!(reply, Reply::Error(ref e) if e.contains("WRONGTYPE")),
            "{reply:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failover_undoes_the_last_writes_and_keeps_the_older_ones() {
        let mut space = Keyspace::default();
        space.keep_undo_log(Duration::from_secs(2));
        let start = Instant::now();
        space.command(start, &["SET", "old", "1"]);
        space.command(start, &["HSET", "h", "state", "pending"]);
        let later = start + Duration::from_secs(5);
        space.command(later, &["HSET", "h", "state", "enqueued"]);
        space.eval(
            later,
            "redis.call('SET', KEYS[1], 'x', 'EX', 60); return redis.call('DEL', KEYS[2])",
            &strings(&["new", "old"]),
            &[],
        );

        let restored = space.undo_since(later);

        assert_eq!(restored.len(), 3, "{restored:?}");
        assert_eq!(
            space.command(later, &["GET", "old"]),
            Reply::Bulk("1".into())
        );
        assert_eq!(space.command(later, &["GET", "new"]), Reply::Nil);
        assert_eq!(
            space.command(later, &["HGET", "h", "state"]),
            Reply::Bulk("pending".into())
        );
    }
}
