//! Schedules: weekly windows of local time such as `"Mon-Fri 09:00-18:00 Europe/Paris"`.
//! A window's edges are turned into instants with the time zone's rules, so "contains" and
//! "next change" agree on days when the clocks change.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// One weekly window.
#[derive(Debug, Clone)]
pub struct Window {
    text: String,
    /// Which days a window starts on, Monday first.
    days: [bool; 7],
    /// Minutes after local midnight; `end` may be 1440 (24:00) or before `start` (the window
    /// then ends the next day).
    start: u16,
    end: u16,
    tz: TimeZone,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day_index(text: &str) -> Option<usize> {
    let text = text.to_ascii_lowercase();
    DAYS.iter()
        .position(|d| text.starts_with(d) && d.len() >= 3 && text.len() <= 9)
}

fn minutes(text: &str) -> Option<u16> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

impl Window {
    /// Parses `"DAYS HH:MM-HH:MM ZONE"`; DAYS is `Mon-Fri`, `Sat,Sun`, `Wed` or `daily`.
    pub fn parse(text: &str) -> Result<Window, String> {
        let hint = "write it like \"Mon-Fri 09:00-18:00 Europe/Paris\" (days, local times, an IANA time zone)";
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [days_text, times, zone] = parts[..] else {
            return Err(format!("`{text}` is not a schedule window; {hint}"));
        };
        let mut days = [false; 7];
        if days_text.eq_ignore_ascii_case("daily") || days_text == "*" {
            days = [true; 7];
        } else {
            for part in days_text.split(',') {
                let (first, last) = part.split_once('-').unwrap_or((part, part));
                let (Some(first), Some(last)) = (day_index(first), day_index(last)) else {
                    return Err(format!("`{part}` is not a day or a range of days; {hint}"));
                };
                // A range may wrap around the week: Fri-Mon.
                let mut d = first;
                loop {
                    days[d] = true;
                    if d == last {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
        }
        let (start, end) = times
            .split_once('-')
            .and_then(|(s, e)| Some((minutes(s)?, minutes(e)?)))
            .filter(|(s, e)| s != e && *s < 1440)
            .ok_or_else(|| format!("`{times}` is not a range of local times; {hint}"))?;
        let tz = TimeZone::get(zone).map_err(|_| {
            format!("`{zone}` is not a time zone wakegate knows; use an IANA name such as Europe/Paris, America/New_York or UTC")
        })?;
        Ok(Window {
            text: text.to_string(),
            days,
            start,
            end,
            tz,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The instant a local time of a date happens (the later side of a gap when the clocks
    /// jump forward, the first occurrence when they go back).
    fn instant(&self, date: Date, minute: u16) -> Timestamp {
        let (date, minute) = if minute >= 1440 {
            (date.tomorrow().unwrap_or(date), minute - 1440)
        } else {
            (date, minute)
        };
        let time = Time::new((minute / 60) as i8, (minute % 60) as i8, 0, 0).unwrap_or(Time::MIN);
        self.tz
            .to_ambiguous_zoned(DateTime::from_parts(date, time))
            .compatible()
            .map(|z| z.timestamp())
            .unwrap_or(Timestamp::MAX)
    }

    /// The windows around `at`, as instants: those starting from two days before to eight after.
    fn instances(&self, at: Timestamp) -> impl Iterator<Item = (Timestamp, Timestamp)> + '_ {
        let today = at.to_zoned(self.tz.clone()).date();
        (-2i64..=8).filter_map(move |offset| {
            let date = today.checked_add(offset.days()).ok()?;
            let weekday = date.weekday().to_monday_zero_offset() as usize;
            if !self.days[weekday] {
                return None;
            }
            let end = if self.end > self.start {
                self.end
            } else {
                self.end + 1440
            };
            Some((self.instant(date, self.start), self.instant(date, end)))
        })
    }

    /// Whether `at` falls inside the window.
    pub fn contains(&self, at: Timestamp) -> bool {
        self.instances(at)
            .any(|(start, end)| start <= at && at < end)
    }

    /// The next instant after `at` at which the window opens or closes.
    pub fn next_change(&self, at: Timestamp) -> Option<Timestamp> {
        self.instances(at)
            .flat_map(|(start, end)| [start, end])
            .filter(|t| *t > at)
            .min()
    }
}

/// Whether any window contains `at`.
pub fn any_contains(windows: &[Window], at: Timestamp) -> Option<&Window> {
    windows.iter().find(|w| w.contains(at))
}

/// The next instant any window opens or closes.
pub fn next_change(windows: &[Window], at: Timestamp) -> Option<Timestamp> {
    windows.iter().filter_map(|w| w.next_change(at)).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn office_hours_in_paris() {
        let w = Window::parse("Mon-Fri 09:00-18:00 Europe/Paris").unwrap();
        // Friday 2026-11-20: Paris is UTC+1.
        assert!(!w.contains(at("2026-11-20T07:59:00Z")));
        assert!(w.contains(at("2026-11-20T08:00:00Z")));
        assert!(w.contains(at("2026-11-20T16:59:59Z")));
        assert!(!w.contains(at("2026-11-20T17:00:00Z")));
        // Saturday: closed; it next opens on Monday 09:00 Paris.
        assert!(!w.contains(at("2026-11-21T10:00:00Z")));
        assert_eq!(
            w.next_change(at("2026-11-21T10:00:00Z")),
            Some(at("2026-11-23T08:00:00Z"))
        );
        assert_eq!(
            w.next_change(at("2026-11-20T12:00:00Z")),
            Some(at("2026-11-20T17:00:00Z"))
        );
    }

    #[test]
    fn daylight_saving_changes_move_the_instants_not_the_wall_clock() {
        let w = Window::parse("Sun 01:00-04:00 Europe/Paris").unwrap();
        // 2026-03-29: clocks jump 02:00 → 03:00. 01:00 CET = 00:00Z, 04:00 CEST = 02:00Z.
        assert!(!w.contains(at("2026-03-28T23:59:00Z")));
        assert!(w.contains(at("2026-03-29T00:00:00Z")));
        assert!(w.contains(at("2026-03-29T01:59:00Z")));
        assert!(!w.contains(at("2026-03-29T02:00:00Z")));
        assert_eq!(
            w.next_change(at("2026-03-29T00:30:00Z")),
            Some(at("2026-03-29T02:00:00Z"))
        );
        // 2026-10-25: clocks go back 03:00 → 02:00. 01:00 CEST = 23:00Z the day before,
        // 04:00 CET = 03:00Z: a window of four hours.
        assert!(w.contains(at("2026-10-24T23:00:00Z")));
        assert!(w.contains(at("2026-10-25T02:59:00Z")));
        assert!(!w.contains(at("2026-10-25T03:00:00Z")));
    }

    #[test]
    fn a_start_in_the_spring_gap_happens_when_the_clocks_have_jumped() {
        let w = Window::parse("Sun 02:30-05:00 Europe/Paris").unwrap();
        // 02:30 does not exist on 2026-03-29; the window opens at 03:30 CEST (01:30Z).
        assert!(!w.contains(at("2026-03-29T01:00:00Z")));
        assert!(w.contains(at("2026-03-29T01:30:00Z")));
        assert_eq!(
            w.next_change(at("2026-03-29T00:00:00Z")),
            Some(at("2026-03-29T01:30:00Z"))
        );
    }

    #[test]
    fn windows_across_midnight_and_around_the_week() {
        let w = Window::parse("Fri-Sat 22:00-02:00 UTC").unwrap();
        assert!(w.contains(at("2026-11-20T23:00:00Z"))); // Friday night
        assert!(w.contains(at("2026-11-22T01:00:00Z"))); // Saturday's window, on Sunday
        assert!(!w.contains(at("2026-11-22T03:00:00Z")));
        let all = Window::parse("daily 00:00-24:00 UTC").unwrap();
        assert!(all.contains(at("2026-11-22T03:00:00Z")));
        let wrap = Window::parse("Sat-Mon 10:00-11:00 UTC").unwrap();
        assert!(wrap.contains(at("2026-11-23T10:30:00Z"))); // Monday
        assert!(!wrap.contains(at("2026-11-24T10:30:00Z"))); // Tuesday
    }

    #[test]
    fn bad_windows_say_how_to_write_them() {
        for (text, wanted) in [
            ("weekdays 09:00-18:00 UTC", "not a day"),
            ("Mon-Fri 9-18 UTC", "not a range of local times"),
            ("Mon-Fri 09:00-18:00 Mars/Olympus", "not a time zone"),
            ("Mon-Fri 09:00-18:00", "not a schedule window"),
            ("Mon 10:00-10:00 UTC", "not a range"),
        ] {
            let err = Window::parse(text).unwrap_err();
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }
}
