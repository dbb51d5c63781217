//! CronJob schedules as upstream reads them (robfig/cron's standard parser): five fields
//! (minute, hour, day of month, month, day of week) with names (`JAN`, `MON`), ranges,
//! lists, steps and `?`; a restricted day of month and day of week match either (Vixie
//! cron); the macros `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//! `@midnight`, `@hourly` and `@every <duration>`. Times are evaluated in `timeZone` (an
//! IANA name; the zone data is built in, as kube-controller-manager embeds Go's), or UTC.

use jiff::tz::TimeZone;
use time::OffsetDateTime;

/// A parsed schedule in its time zone.
pub struct Schedule {
    kind: Kind,
    zone: TimeZone,
}

enum Kind {
    Cron(Box<croner::Cron>),
    /// `@every`: a fixed period, counted from whole seconds.
    Every(std::time::Duration),
}

/// Why a schedule or time zone was refused (the message of upstream's field error).
#[derive(Debug, PartialEq)]
pub enum ScheduleError {
    /// `spec.schedule` is not a schedule.
    Schedule(String),
    /// `spec.timeZone` is not a known zone.
    TimeZone(String),
}

const NAMES: &[&str] = &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC", "SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Go's `time.ParseDuration` for non-negative durations (`1h30m`, `90s`, `1.5h`,
/// `250ms`): what `@every` takes, and what nanokube's duration flags take.
pub fn parse_go_duration(s: &str) -> Result<std::time::Duration, String> {
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let unit = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (u, next) = tail.split_at(unit);
        total += n * match u {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("invalid duration {s:?}: unknown unit {u:?}")),
        };
        rest = next;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(format!("invalid duration {s:?}: out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

impl Schedule {
    /// Parse `schedule`, to be evaluated in `time_zone` (UTC when none).
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let zone = match time_zone {
            None => TimeZone::UTC,
            Some(z) if z.eq_ignore_ascii_case("local") => {
                return Err(ScheduleError::TimeZone("timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones".into()))
            }
            Some(z) => TimeZone::get(z).map_err(|_| ScheduleError::TimeZone(format!("unknown time zone {z}")))?,
        };
        if schedule.contains("TZ") {
            return Err(ScheduleError::Schedule(if time_zone.is_some() {
                "cannot use both timeZone field and TZ or CRON_TZ in schedule".into()
            } else {
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into()
            }));
        }
        let trimmed = schedule.trim();
        if let Some(every) = trimmed.strip_prefix("@every ") {
            let d = parse_go_duration(every.trim()).map_err(|_| ScheduleError::Schedule(format!("failed to parse duration {schedule}")))?;
            // robfig rounds the period to whole seconds, at least one.
            let d = std::time::Duration::from_secs(d.as_secs().max(1));
            return Ok(Schedule { kind: Kind::Every(d), zone });
        }
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        if !trimmed.starts_with('@') && fields.len() != 5 {
            return Err(ScheduleError::Schedule(format!("expected exactly 5 fields, found {}: {fields:?}", fields.len())));
        }
        // Only robfig's syntax: no `L`, `W`, `#` or `+` of other crons.
        let upper = trimmed.to_ascii_uppercase();
        if !trimmed.starts_with('@') {
            for word in upper.split(|c: char| !c.is_ascii_alphabetic()).filter(|w| !w.is_empty()) {
                if !NAMES.contains(&word) {
                    return Err(ScheduleError::Schedule(format!("failed to parse int from {word}")));
                }
            }
            if upper.contains(['#', '+']) {
                return Err(ScheduleError::Schedule(format!("unsupported syntax in {trimmed}")));
            }
        } else if !["@YEARLY", "@ANNUALLY", "@MONTHLY", "@WEEKLY", "@DAILY", "@MIDNIGHT", "@HOURLY"].contains(&upper.as_str()) {
            return Err(ScheduleError::Schedule(format!("unrecognized descriptor: {trimmed}")));
        }
        let parser = croner::parser::CronParser::builder().seconds(croner::parser::Seconds::Disallowed).year(croner::parser::Year::Disallowed).build();
        let cron = parser.parse(trimmed).map_err(|e| ScheduleError::Schedule(e.to_string()))?;
        Ok(Schedule { kind: Kind::Cron(Box::new(cron)), zone })
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        match &self.kind {
            Kind::Every(d) => {
                let whole = t.replace_nanosecond(0).ok()?;
                Some(whole + *d)
            }
            Kind::Cron(cron) => {
                let ts = jiff::Timestamp::from_second(t.unix_timestamp()).ok()?;
                let zoned = ts.to_zoned(self.zone.clone());
                let next = cron.find_next_occurrence(&zoned, false).ok()?;
                OffsetDateTime::from_unix_timestamp(next.timestamp().as_second()).ok()
            }
        }
    }

    /// `t` as RFC 3339 in the schedule's zone (the `cronjob-scheduled-timestamp`
    /// annotation).
    pub fn format_in_zone(&self, t: OffsetDateTime) -> String {
        match jiff::Timestamp::from_second(t.unix_timestamp()) {
            Ok(ts) => {
                let z = ts.to_zoned(self.zone.clone());
                let offset = z.offset();
                if offset.seconds() == 0 {
                    z.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
                } else {
                    z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
                }
            }
            Err(_) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn next(s: &str, tz: Option<&str>, t: OffsetDateTime) -> OffsetDateTime {
        Schedule::parse(s, tz).unwrap().next_after(t).unwrap()
    }

    #[test]
    fn standard_fields_names_and_macros() {
        let t = datetime!(2026-12-03 12:07:30 UTC);
        assert_eq!(next("*/15 * * * *", None, t), datetime!(2026-12-03 12:15:00 UTC));
        assert_eq!(next("0 9 * * MON-FRI", None, t), datetime!(2026-12-04 09:00:00 UTC));
        assert_eq!(next("30 2 1 JAN ?", None, t), datetime!(2027-01-01 02:30:00 UTC));
        assert_eq!(next("@hourly", None, t), datetime!(2026-12-03 13:00:00 UTC));
        assert_eq!(next("@daily", None, t), datetime!(2026-12-04 00:00:00 UTC));
        assert_eq!(next("@weekly", None, t), datetime!(2026-12-06 00:00:00 UTC));
        assert_eq!(next("@every 90s", None, t), datetime!(2026-12-03 12:09:00 UTC));
        // Day of month and day of week both restricted: either matches (Vixie cron).
        assert_eq!(next("0 0 13 * FRI", None, t), datetime!(2026-12-04 00:00:00 UTC));
    }

    #[test]
    fn time_zones_move_the_schedule() {
        let t = datetime!(2026-12-03 12:00:00 UTC);
        // 09:00 in Seoul is 00:00 UTC.
        assert_eq!(next("0 9 * * *", Some("Asia/Seoul"), t), datetime!(2026-12-04 00:00:00 UTC));
        let s = Schedule::parse("0 9 * * *", Some("Asia/Seoul")).unwrap();
        assert_eq!(s.format_in_zone(datetime!(2026-12-04 00:00:00 UTC)), "2026-12-04T09:00:00+09:00");
        assert_eq!(Schedule::parse("0 9 * * *", None).unwrap().format_in_zone(t), "2026-12-03T12:00:00Z");
    }

    #[test]
    fn bad_schedules_and_zones_are_refused_with_upstreams_words() {
        assert!(matches!(Schedule::parse("* * * *", None), Err(ScheduleError::Schedule(m)) if m.starts_with("expected exactly 5 fields, found 4")));
        assert!(matches!(Schedule::parse("61 * * * *", None), Err(ScheduleError::Schedule(_))));
        assert!(matches!(Schedule::parse("0 0 L * *", None), Err(ScheduleError::Schedule(_))));
        assert!(matches!(Schedule::parse("@fortnightly", None), Err(ScheduleError::Schedule(_))));
        assert_eq!(
            Schedule::parse("CRON_TZ=UTC 0 * * * *", None).err(),
            Some(ScheduleError::Schedule("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into()))
        );
        assert_eq!(Schedule::parse("0 * * * *", Some("Mars/Olympus")).err(), Some(ScheduleError::TimeZone("unknown time zone Mars/Olympus".into())));
        assert!(matches!(Schedule::parse("0 * * * *", Some("Local")), Err(ScheduleError::TimeZone(_))));
    }
}
