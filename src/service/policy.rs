//! The policy decisions of a service as plain functions over plain data: when an unused
//! service stops (idle_timeout, min_awake, leases, awake_during, always_on), what stops it
//! whatever the use (asleep_during, max_runtime and its warning, min_players), what wakes it
//! by itself, the crash-loop breaker and the retry backoff. The actor asks and acts; nothing
//! here touches a channel, a clock or the backend, so every rule is tested on its own.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::config::{self, Policies};
use crate::event::{Cause, State};
use crate::schedule::{self, Window};

/// The moment a decision is taken, on both clocks: the monotonic one for timers, the wall
/// clock for leases and schedules.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub wall: SystemTime,
}

impl Now {
    /// The current moment.
    pub fn read() -> Now {
        Now {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn timestamp(self) -> jiff::Timestamp {
        jiff::Timestamp::try_from(self.wall).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }

    /// The `Instant` of a wall-clock time (now when it has passed).
    fn instant_of(self, at: jiff::Timestamp) -> Instant {
        let left = at.duration_since(self.timestamp());
        self.instant + Duration::try_from(left).unwrap_or_default()
    }

    /// The wall-clock time of an `Instant`.
    pub fn wall_of(self, at: Instant) -> SystemTime {
        if at >= self.instant {
            self.wall + (at - self.instant)
        } else {
            self.wall - (self.instant - at)
        }
    }
}

/// The rules of one service, as configured.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The service's name, for the messages.
    pub name: String,
    pub idle_timeout: Duration,
    pub min_awake: Duration,
    pub wake_timeout: Duration,
    pub always_on: bool,
    pub policies: Policies,
}

impl Rules {
    pub fn of(service: &config::Service) -> Rules {
        Rules {
            name: service.name.clone(),
            idle_timeout: service.idle_timeout,
            min_awake: service.min_awake,
            wake_timeout: service.wake_timeout,
            always_on: service.always_on,
            policies: service.policy.clone(),
        }
    }
}

/// A retry due at `at`, after waiting `wait` (which the next one doubles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub at: Instant,
    pub wait: Duration,
}

/// The next backoff: one second at first, doubling up to five minutes.
pub fn backoff(previous: Option<Backoff>, now: Instant) -> Backoff {
    let wait = previous.map_or(Duration::from_secs(1), |b| {
        (b.wait * 2).min(Duration::from_secs(300))
    });
    Backoff {
        at: now + wait,
        wait,
    }
}

/// The crash-loop breaker: automatic restarts within the window.
#[derive(Debug, Clone, Default)]
pub struct Breaker {
    restarts: VecDeque<Instant>,
}

impl Breaker {
    /// Whether one more automatic restart is allowed (and counts it): at most `max_restarts`
    /// within `restart_window`.
    pub fn may_restart(&mut self, policies: &Policies, now: Instant) -> bool {
        let window = policies.restart_window;
        while self
            .restarts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > window)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() >= policies.max_restarts as usize {
            return false;
        }
        self.restarts.push_back(now);
        true
    }

    /// Someone asked for a wake: the count starts over.
    pub fn reset(&mut self) {
        self.restarts.clear();
    }

    /// Why it does not restart again, once tripped.
    pub fn tripped(&self, policies: &Policies) -> String {
        let n = self.restarts.len();
        format!(
            "restarted {n} time{} within {}: not restarting again; fix the server, then wake it by hand",
            if n == 1 { "" } else { "s" },
            humantime::format_duration(policies.restart_window)
        )
    }
}

/// What a `min_players` check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Players {
    /// Enough are on (or there is no such rule).
    Enough,
    /// Too few: warning `warning` of `of`, with the sentence for the event.
    Warn {
        players: u32,
        warning: u32,
        of: u32,
        reason: String,
    },
    /// Too few after the last warning: stop, for this reason.
    Stop(String),
}

/// What the policies remember between decisions, for one service: one place for the timers
/// and counters the actor keeps across states.
#[derive(Debug, Clone)]
pub struct Policy {
    pub rules: Rules,
    /// When the current wake finished.
    pub awake_at: Instant,
    /// Since when nothing uses it, while awake.
    pub idle_since: Option<Instant>,
    /// When to try again to stop a backend whose stop failed.
    pub stop_retry: Option<Backoff>,
    /// When an always-on service whose wake failed is tried again.
    pub wake_retry: Option<Backoff>,
    pub breaker: Breaker,
    /// The max_runtime warning went out for this wake.
    pub runtime_warned: bool,
    /// When the next min_players check is due, and how many warnings went out in a row.
    pub player_check_at: Option<Instant>,
    pub player_warnings: u32,
    /// After this stop, the service is `failed` (the crash-loop breaker tripped) with this reason.
    pub fail_after_stop: Option<String>,
}

impl Policy {
    pub fn new(rules: Rules, now: Instant) -> Policy {
        Policy {
            rules,
            awake_at: now,
            idle_since: None,
            stop_retry: None,
            wake_retry: None,
            breaker: Breaker::default(),
            runtime_warned: false,
            player_check_at: None,
            player_warnings: 0,
            fail_after_stop: None,
        }
    }

    /// The backend became ready: the timers of a wake start over.
    pub fn woke(&mut self, now: Instant) {
        self.awake_at = now;
        self.idle_since = None;
        self.stop_retry = None;
        self.wake_retry = None;
        self.runtime_warned = false;
        self.player_warnings = 0;
        self.player_check_at = self.rules.policies.min_players.map(|m| now + m.interval);
    }

    /// Follows whether anything uses it: the idle countdown starts when nothing does (and
    /// keeps its start while that lasts). Returns since when it is idle, on the wall clock.
    pub fn track_idle(&mut self, unused: bool, now: Now) -> Option<SystemTime> {
        self.idle_since = unused.then(|| self.idle_since.unwrap_or(now.instant));
        self.idle_since.map(|since| now.wall_of(since))
    }

    /// When to stop if nothing changes: after the idle timeout, not before `min_awake`, and
    /// not while a lease (in force until `leased_until`) or an awake_during window is in force;
    /// never for always_on.
    pub fn stop_at(&self, leased_until: Option<SystemTime>, now: Now) -> Option<Instant> {
        let rules = &self.rules;
        if rules.always_on {
            return None;
        }
        let since = self.idle_since?;
        let mut at = (since + rules.idle_timeout).max(self.awake_at + rules.min_awake);
        if let Some(until) = leased_until
            && let Ok(left) = until.duration_since(now.wall)
        {
            at = at.max(now.instant + left);
        }
        let wall = now.timestamp();
        if let Some(window) = schedule::any_contains(&rules.policies.awake_during, wall) {
            at = at.max(window.next_change(wall).map_or(at, |t| now.instant_of(t)));
        }
        Some(at)
    }

    /// Why it must stop now, whatever the use: an asleep_during window, or max_runtime.
    pub fn must_stop(&self, now: Now) -> Option<(String, Cause)> {
        if let Some(why) = self.asleep_by_schedule(now) {
            return Some((why, Cause::Schedule));
        }
        if let Some(max) = self.rules.policies.max_runtime
            && now.instant.saturating_duration_since(self.awake_at) >= max
        {
            return Some((
                format!(
                    "it ran for max_runtime ({})",
                    humantime::format_duration(max)
                ),
                Cause::MaxRuntime,
            ));
        }
        None
    }

    /// When max_runtime ends this wake.
    pub fn runtime_end(&self) -> Option<Instant> {
        self.rules.policies.max_runtime.map(|m| self.awake_at + m)
    }

    /// When the max_runtime warning is due, unless it went out already.
    pub fn runtime_warning_at(&self) -> Option<Instant> {
        let warning = self.rules.policies.max_runtime_warning;
        self.runtime_end()
            .filter(|_| !self.runtime_warned)
            .map(|end| end.checked_sub(warning).unwrap_or(self.awake_at))
    }

    /// The max_runtime warning, sent once per wake: the time left, rounded to the second, and
    /// the sentence for the event.
    pub fn runtime_warning(&mut self, now: Instant) -> (Duration, String) {
        self.runtime_warned = true;
        let left = self
            .runtime_end()
            .map(|e| e.saturating_duration_since(now))
            .unwrap_or_default();
        let left = Duration::from_secs((left.as_millis() as u64 + 500) / 1000);
        (left, format!("it stops in {} (max_runtime)", round(left)))
    }

    /// A min_players check: counts the players and warns, then says stop, when fewer than
    /// `min_players` are on `warnings + 1` checks in a row. Schedules the next check.
    pub fn check_players(&mut self, players: u32, now: Instant) -> Players {
        let Some(rule) = self.rules.policies.min_players else {
            return Players::Enough;
        };
        self.player_check_at = Some(now + rule.interval);
        if players >= rule.count {
            self.player_warnings = 0;
            return Players::Enough;
        }
        if self.player_warnings >= rule.warnings {
            return Players::Stop(format!(
                "fewer than {} players for {} checks in a row",
                rule.count,
                rule.warnings + 1
            ));
        }
        self.player_warnings += 1;
        Players::Warn {
            players,
            warning: self.player_warnings,
            of: rule.warnings,
            reason: format!(
                "{players} player(s) online, fewer than min_players ({}): warning {} of {}; it stops after the last one",
                rule.count, self.player_warnings, rule.warnings
            ),
        }
    }

    /// Whether one more automatic restart is allowed (and counts it).
    pub fn may_restart(&mut self, now: Instant) -> bool {
        self.breaker.may_restart(&self.rules.policies, now)
    }

    /// Why the breaker stops the restarts.
    pub fn crash_loop(&self) -> String {
        self.breaker.tripped(&self.rules.policies)
    }

    /// Why it may not wake now, when an `asleep_during` window is open.
    pub fn asleep_by_schedule(&self, now: Now) -> Option<String> {
        open_window(&self.rules.policies.asleep_during, now)
            .map(|window| format!("{} sleeps by schedule {window}", self.rules.name))
    }

    /// Why it may not be put to sleep by hand: it is always on, or an awake_during window is
    /// open (it would only wake again at once).
    pub fn kept_awake_by_rule(&self, now: Now) -> Option<String> {
        if self.rules.always_on {
            return Some(format!(
                "{} is always_on; remove always_on from its config to let it sleep",
                self.rules.name
            ));
        }
        open_window(&self.rules.policies.awake_during, now)
            .map(|window| format!("{} is awake by schedule {window}", self.rules.name))
    }

    /// Why a sleeping service should wake by itself now: always-on, or an awake_during window.
    pub fn wake_by_rule(&self, state: State, now: Now) -> Option<(Cause, String)> {
        if state != State::Asleep || self.asleep_by_schedule(now).is_some() {
            return None;
        }
        if self.rules.always_on {
            return Some((Cause::Restart, "always_on: keeping it running".into()));
        }
        let wall = now.timestamp();
        schedule::any_contains(&self.rules.policies.awake_during, wall)
            .map(|w| (Cause::Schedule, format!("awake by schedule ({})", w.text())))
    }

    /// When a schedule window next opens or closes.
    pub fn schedule_change(&self, now: Now) -> Option<Instant> {
        let wall = now.timestamp();
        let policies = &self.rules.policies;
        let awake = schedule::next_change(&policies.awake_during, wall);
        let asleep = schedule::next_change(&policies.asleep_during, wall);
        awake
            .into_iter()
            .chain(asleep)
            .min()
            .map(|t| now.instant_of(t))
    }
}

/// The window open now, as "(TEXT) until WHEN" for messages.
fn open_window(windows: &[Window], now: Now) -> Option<String> {
    let wall = now.timestamp();
    let window = schedule::any_contains(windows, wall)?;
    let until = window.next_change(wall).map_or(String::new(), |t| {
        format!(" until {}", t.strftime("%Y-%m-%d %H:%M UTC"))
    });
    Some(format!("({}){until}", window.text()))
}

/// A duration for messages, rounded to what matters at its size.
pub fn round(d: Duration) -> String {
    crate::human::duration(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::config::MinPlayers;

    const SEC: Duration = Duration::from_secs(1);
    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    fn rules() -> Rules {
        Rules {
            name: "web".into(),
            idle_timeout: 10 * MIN,
            min_awake: Duration::ZERO,
            wake_timeout: MIN,
            always_on: false,
            policies: Policies::default(),
        }
    }

    /// A moment on a Friday at noon UTC.
    fn friday_noon() -> Now {
        let wall: jiff::Timestamp = "2026-11-20T12:00:00Z".parse().unwrap();
        Now {
            instant: Instant::now(),
            wall: SystemTime::from(wall),
        }
    }

    fn later(now: Now, by: Duration) -> Now {
        Now {
            instant: now.instant + by,
            wall: now.wall + by,
        }
    }

    fn window(text: &str) -> Window {
        Window::parse(text).unwrap()
    }

    /// A policy awake since `now`, unused since `now`.
    fn idle_from(rules: Rules, now: Now) -> Policy {
        let mut policy = Policy::new(rules, now.instant);
        policy.woke(now.instant);
        policy.track_idle(true, now);
        policy
    }

    #[test]
    fn an_unused_service_stops_after_its_idle_timeout() {
        let now = friday_noon();
        let policy = idle_from(rules(), now);
        assert_eq!(policy.stop_at(None, now), Some(now.instant + 10 * MIN));
        // Later looks keep the start of the idle time.
        let mut policy = policy;
        let then = later(now, 3 * MIN);
        assert_eq!(policy.track_idle(true, then), Some(now.wall));
        assert_eq!(policy.stop_at(None, then), Some(now.instant + 10 * MIN));
    }

    #[test]
    fn a_service_in_use_has_no_stop_time_and_counts_again_from_the_next_idle_moment() {
        let now = friday_noon();
        let mut policy = idle_from(rules(), now);
        assert_eq!(policy.track_idle(false, later(now, MIN)), None);
        assert_eq!(policy.stop_at(None, later(now, MIN)), None);
        let free = later(now, 5 * MIN);
        policy.track_idle(true, free);
        assert_eq!(policy.stop_at(None, free), Some(free.instant + 10 * MIN));
    }

    #[test]
    fn min_awake_holds_an_idle_stop_back() {
        let now = friday_noon();
        let policy = idle_from(
            Rules {
                idle_timeout: MIN,
                min_awake: HOUR,
                ..rules()
            },
            now,
        );
        assert_eq!(policy.stop_at(None, now), Some(now.instant + HOUR));
    }

    #[test]
    fn a_lease_holds_an_idle_stop_back_until_it_expires() {
        let now = friday_noon();
        let policy = idle_from(rules(), now);
        let until = now.wall + 2 * HOUR;
        assert_eq!(
            policy.stop_at(Some(until), now),
            Some(now.instant + 2 * HOUR)
        );
        // An expired lease changes nothing.
        let expired = now.wall - SEC;
        assert_eq!(
            policy.stop_at(Some(expired), now),
            Some(now.instant + 10 * MIN)
        );
    }

    #[test]
    fn an_open_awake_during_window_holds_an_idle_stop_back_until_it_closes() {
        let now = friday_noon();
        let mut rules = rules();
        rules.policies.awake_during = vec![window("Mon-Fri 09:00-18:00 UTC")];
        let policy = idle_from(rules, now);
        assert_eq!(policy.stop_at(None, now), Some(now.instant + 6 * HOUR));
        assert!(policy.kept_awake_by_rule(now).unwrap().starts_with(
            "web is awake by schedule (Mon-Fri 09:00-18:00 UTC) until 2026-11-20 18:00 UTC"
        ));
    }

    #[test]
    fn an_always_on_service_never_stops_for_idleness_nor_by_hand() {
        let now = friday_noon();
        let policy = idle_from(
            Rules {
                always_on: true,
                ..rules()
            },
            now,
        );
        assert_eq!(policy.stop_at(None, now), None);
        assert_eq!(
            policy.kept_awake_by_rule(now).as_deref(),
            Some("web is always_on; remove always_on from its config to let it sleep")
        );
        assert_eq!(
            policy.wake_by_rule(State::Asleep, now),
            Some((Cause::Restart, "always_on: keeping it running".into()))
        );
        assert_eq!(policy.wake_by_rule(State::Failed, now), None);
    }

    #[test]
    fn max_runtime_warns_before_and_stops_at_the_end() {
        let now = friday_noon();
        let mut rules = rules();
        rules.policies.max_runtime = Some(2 * HOUR);
        rules.policies.max_runtime_warning = 10 * MIN;
        let mut policy = idle_from(rules, now);
        assert_eq!(policy.runtime_end(), Some(now.instant + 2 * HOUR));
        let warn_at = now.instant + 2 * HOUR - 10 * MIN;
        assert_eq!(policy.runtime_warning_at(), Some(warn_at));
        let (left, reason) = policy.runtime_warning(warn_at);
        assert_eq!(left, 10 * MIN);
        assert_eq!(reason, "it stops in 10m (max_runtime)");
        assert_eq!(policy.runtime_warning_at(), None, "one warning per wake");
        assert_eq!(policy.must_stop(later(now, 2 * HOUR - SEC)), None);
        assert_eq!(
            policy.must_stop(later(now, 2 * HOUR)),
            Some(("it ran for max_runtime (2h)".into(), Cause::MaxRuntime))
        );
        // The next wake warns again.
        policy.woke(now.instant + 3 * HOUR);
        assert!(policy.runtime_warning_at().is_some());
    }

    #[test]
    fn a_warning_longer_than_max_runtime_goes_out_at_the_wake() {
        let now = friday_noon();
        let mut rules = rules();
        rules.policies.max_runtime = Some(MIN);
        rules.policies.max_runtime_warning = HOUR;
        let policy = idle_from(rules, now);
        assert!(
            policy
                .runtime_warning_at()
                .is_some_and(|at| at <= now.instant)
        );
    }

    #[test]
    fn too_few_players_warn_then_stop_and_enough_players_start_over() {
        let now = friday_noon().instant;
        let mut rules = rules();
        rules.policies.min_players = Some(MinPlayers {
            count: 2,
            warnings: 2,
            interval: 5 * MIN,
        });
        let mut policy = Policy::new(rules, now);
        policy.woke(now);
        assert_eq!(policy.player_check_at, Some(now + 5 * MIN));
        let warn = |p: &mut Policy, at| match p.check_players(1, at) {
            Players::Warn { warning, of, .. } => (warning, of),
            other => panic!("{other:?}"),
        };
        assert_eq!(warn(&mut policy, now + 5 * MIN), (1, 2));
        assert_eq!(policy.player_check_at, Some(now + 10 * MIN));
        // Enough players: the warnings start over.
        assert_eq!(policy.check_players(2, now + 10 * MIN), Players::Enough);
        assert_eq!(warn(&mut policy, now + 15 * MIN), (1, 2));
        match policy.check_players(0, now + 20 * MIN) {
            Players::Warn { reason, .. } => assert_eq!(
                reason,
                "0 player(s) online, fewer than min_players (2): warning 2 of 2; it stops after the last one"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            policy.check_players(1, now + 25 * MIN),
            Players::Stop("fewer than 2 players for 3 checks in a row".into())
        );
    }

    #[test]
    fn without_min_players_nothing_is_checked() {
        let now = friday_noon().instant;
        let mut policy = Policy::new(rules(), now);
        policy.woke(now);
        assert_eq!(policy.player_check_at, None);
        assert_eq!(policy.check_players(0, now), Players::Enough);
        assert_eq!(policy.player_check_at, None);
    }

    #[test]
    fn the_breaker_allows_max_restarts_within_the_window() {
        let now = friday_noon().instant;
        let mut rules = rules();
        rules.policies.max_restarts = 2;
        rules.policies.restart_window = 10 * MIN;
        let mut policy = Policy::new(rules, now);
        assert!(policy.may_restart(now));
        assert!(policy.may_restart(now + MIN));
        assert!(!policy.may_restart(now + 2 * MIN));
        assert_eq!(
            policy.crash_loop(),
            "restarted 2 times within 10m: not restarting again; fix the server, then wake it by hand"
        );
        // Once the first restart is out of the window, one more is allowed.
        assert!(policy.may_restart(now + 10 * MIN + SEC));
        assert!(!policy.may_restart(now + 10 * MIN + 2 * SEC));
        // A wake asked for by someone starts the count over.
        policy.breaker.reset();
        assert!(policy.may_restart(now + 10 * MIN + 3 * SEC));
    }

    #[test]
    fn a_breaker_without_restarts_never_restarts() {
        let now = friday_noon().instant;
        let mut rules = rules();
        rules.policies.max_restarts = 0;
        let mut policy = Policy::new(rules, now);
        assert!(!policy.may_restart(now));
        assert!(policy.crash_loop().starts_with("restarted 0 times within"));
    }

    #[test]
    fn an_asleep_during_window_refuses_wakes_and_stops_an_awake_service() {
        let now = friday_noon();
        let mut rules = rules();
        rules.policies.asleep_during = vec![window("Fri 11:00-13:00 UTC")];
        rules.always_on = true;
        let policy = idle_from(rules, now);
        let why = policy.asleep_by_schedule(now).unwrap();
        assert_eq!(
            why,
            "web sleeps by schedule (Fri 11:00-13:00 UTC) until 2026-11-20 13:00 UTC"
        );
        assert_eq!(policy.must_stop(now), Some((why, Cause::Schedule)));
        // Not even always_on wakes it inside the window.
        assert_eq!(policy.wake_by_rule(State::Asleep, now), None);
        assert_eq!(policy.schedule_change(now), Some(now.instant + HOUR));
        let after = later(now, HOUR);
        assert_eq!(policy.asleep_by_schedule(after), None);
        assert_eq!(policy.must_stop(after), None);
    }

    #[test]
    fn an_awake_during_window_wakes_a_sleeping_service() {
        let now = friday_noon();
        let mut rules = rules();
        rules.policies.awake_during = vec![window("Fri 12:00-14:00 UTC")];
        let policy = Policy::new(rules, now.instant);
        assert_eq!(
            policy.wake_by_rule(State::Asleep, now),
            Some((
                Cause::Schedule,
                "awake by schedule (Fri 12:00-14:00 UTC)".into()
            ))
        );
        assert_eq!(policy.wake_by_rule(State::Awake, now), None);
        assert_eq!(policy.schedule_change(now), Some(now.instant + 2 * HOUR));
        assert_eq!(
            policy.wake_by_rule(State::Asleep, later(now, 2 * HOUR)),
            None
        );
    }

    #[test]
    fn the_backoff_doubles_from_one_second_up_to_five_minutes() {
        let now = friday_noon().instant;
        let mut retry = None;
        let mut waits = Vec::new();
        for _ in 0..11 {
            let next = backoff(retry, now);
            assert_eq!(next.at, now + next.wait);
            waits.push(next.wait.as_secs());
            retry = Some(next);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    }
}
