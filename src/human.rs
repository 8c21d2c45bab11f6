//! Durations for people: rounded to what matters at their size ("340ms", "2.3s", "30s",
//! "4m 5s", "2h 10m", "3d 4h"), never "30s 1ms".

use std::time::Duration;

/// A duration for messages and tables.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 9950 {
        let tenths = (ms + 50) / 100;
        return if tenths.is_multiple_of(10) {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        };
    }
    // Round to the unit shown last: seconds under an hour, minutes under a day, else hours.
    let secs = (ms + 500) / 1000;
    let unit = if secs < 3600 {
        1
    } else if secs < 86400 {
        60
    } else {
        3600
    };
    let secs = (secs + unit / 2) / unit * unit;
    let parts = [
        (secs / 86400, "d"),
        (secs % 86400 / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
    ];
    let text: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| format!("{n}{u}"))
        .collect();
    text.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_rounded_to_what_matters() {
        let ms = Duration::from_millis;
        assert_eq!(duration(ms(0)), "0ms");
        assert_eq!(duration(ms(340)), "340ms");
        assert_eq!(duration(ms(2042)), "2s");
        assert_eq!(duration(ms(2340)), "2.3s");
        assert_eq!(duration(ms(9960)), "10s");
        assert_eq!(duration(ms(30_001)), "30s");
        assert_eq!(duration(ms(245_400)), "4m 5s");
        assert_eq!(duration(ms(3_599_700)), "1h");
        assert_eq!(duration(ms(7_830_000)), "2h 11m");
        assert_eq!(duration(ms(273_600_000)), "3d 4h");
    }
}
