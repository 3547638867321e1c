//! Scheduled turns: the `[schedules]` section and a schedule as stored (a cron
//! expression in a time zone, or one time), with the arithmetic of its fire
//! times. Each fire time gets message and turn ids derived from the schedule
//! and the time, so however many replicas (or restarts) fire it, the
//! conversation queues it once.

use crate::ids::{ConversationId, TenantId, UserId};
use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[schedules]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulesConfig {
    /// Run the scheduler in this process (in the roles that run actors).
    pub enabled: bool,
    /// How often due schedules are looked for (the precision of fire times).
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// A fire time missed while no replica ran is still run once if it is at
    /// most this old when a replica comes back; older ones are skipped.
    #[serde(with = "humantime_serde")]
    pub catch_up_window: Duration,
    /// Schedules one user may hold (429 `too_many_schedules` past it).
    pub max_per_user: u32,
}

impl Default for SchedulesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tick: Duration::from_secs(1),
            catch_up_window: Duration::from_secs(3600),
            max_per_user: 100,
        }
    }
}

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Its id.
    pub id: String,
    /// The tenant.
    pub tenant_id: TenantId,
    /// The user it posts as.
    pub owner: UserId,
    /// A cron expression (5 fields, or 6 with seconds first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Or one time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// The IANA time zone the cron expression reads in (`Europe/Paris`).
    pub timezone: String,
    /// The conversation each run posts into; `None`: a new one per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<ConversationId>,
    /// The message each run posts.
    pub content: String,
    /// Where each run's outcome is posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Paused schedules do not fire (missed times are not caught up).
    pub paused: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The next fire time (`None`: a one-time schedule that has fired).
    pub next_fire: Option<DateTime<Utc>>,
    /// The last fire time run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire: Option<DateTime<Utc>>,
    /// Runs so far.
    #[serde(default)]
    pub runs: u64,
}

/// Parses a cron expression (5 fields, or 6 with seconds first).
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("not a cron expression: {e}"))
}

/// Parses an IANA time zone name.
pub fn parse_timezone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>()
        .map_err(|_| format!("`{name}` is not an IANA time zone (e.g. Europe/Paris)"))
}

/// `t` without its fraction of a second: croner keeps the fraction of the time
/// it starts from, and a fire time must not depend on when (or on which
/// replica) it was computed, since its run id is derived from it.
fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::Timelike;
    t.with_nanosecond(0).unwrap_or(t)
}

impl Schedule {
    /// The first fire time after `t` (`None` when there is none).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match (&self.cron, self.at) {
            (Some(expr), _) => {
                let cron = parse_cron(expr).ok()?;
                let tz = parse_timezone(&self.timezone).ok()?;
                cron.find_next_occurrence(&whole_seconds(t).with_timezone(&tz), false)
                    .ok()
                    .map(|d| d.with_timezone(&Utc))
            }
            (None, Some(at)) if at > t => Some(at),
            _ => None,
        }
    }

    /// The fire time to run at `now`: the latest one due (missed earlier ones
    /// collapse into it), or `None` when nothing is due.
    pub fn due(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let next = self.next_fire.filter(|n| *n <= now)?;
        match &self.cron {
            Some(expr) => {
                let cron = parse_cron(expr).ok()?;
                let tz = parse_timezone(&self.timezone).ok()?;
                let latest = cron
                    .find_previous_occurrence(&whole_seconds(now).with_timezone(&tz), true)
                    .ok()
                    .map(|d| d.with_timezone(&Utc))?;
                Some(latest.max(next))
            }
            None => Some(next),
        }
    }

    /// A stable UUID for this schedule's run at `fire` (`what` names the id's
    /// kind: message, turn, conversation).
    pub fn run_id(&self, fire: DateTime<Utc>, what: &str) -> String {
        const NS: uuid::Uuid = uuid::Uuid::from_u128(0x2d7c_41aa_9b3e_4c61_8f0d_5e2a_7c19_b4e8);
        let name = format!(
            "{}/{}/{}/{what}",
            self.tenant_id,
            self.id,
            fire.timestamp_millis()
        );
        uuid::Uuid::new_v5(&NS, name.as_bytes()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn schedule(cron: &str, tz: &str) -> Schedule {
        Schedule {
            id: "s1".into(),
            tenant_id: TenantId::parse("acme").unwrap_or_else(|e| panic!("{e}")),
            owner: UserId::parse("ana").unwrap_or_else(|e| panic!("{e}")),
            cron: Some(cron.into()),
            at: None,
            timezone: tz.into(),
            conversation_id: None,
            content: "hi".into(),
            webhook: None,
            paused: false,
            created_at: Utc::now(),
            next_fire: None,
            last_fire: None,
            runs: 0,
        }
    }

    #[test]
    fn cron_fires_in_its_time_zone_and_missed_times_collapse() {
        let mut s = schedule("0 9 * * *", "Europe/Paris");
        // 2026-07-01 06:00 UTC is 08:00 in Paris (summer time): next is 07:00 UTC.
        let t = Utc.with_ymd_and_hms(2026, 7, 1, 6, 0, 0).unwrap();
        let next = s.next_after(t).unwrap();
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 7, 1, 7, 0, 0).unwrap());
        s.next_fire = Some(next);
        assert_eq!(s.due(t), None);
        // Three days later, the three missed fires collapse into the latest.
        let later = Utc.with_ymd_and_hms(2026, 7, 4, 8, 0, 0).unwrap();
        assert_eq!(
            s.due(later),
            Some(Utc.with_ymd_and_hms(2026, 7, 4, 7, 0, 0).unwrap())
        );
        // Ids per fire time are stable and distinct.
        assert_eq!(s.run_id(next, "message"), s.run_id(next, "message"));
        assert_ne!(s.run_id(next, "message"), s.run_id(later, "message"));
        // The fraction of a second of the time it is computed from (which
        // differs between replicas) never reaches a fire time or its run id.
        let a = s.next_after(t + chrono::Duration::nanoseconds(453_062_659));
        assert_eq!(a, Some(next));
        let b = s.due(later + chrono::Duration::nanoseconds(12_345));
        assert_eq!(b, Some(Utc.with_ymd_and_hms(2026, 7, 4, 7, 0, 0).unwrap()));
        assert!(parse_cron("every day").is_err());
        assert!(parse_timezone("Mars/Olympus").is_err());
        assert!(parse_cron("*/2 * * * * *").is_ok());
    }
}
