//! What devices and app servers change about a device: topic memberships (SUBSCRIBE or
//! HTTP) and aliases (control publishes or HTTP), with their limits, kept in step in the
//! shard's indexes and the store.

use super::inbox::{ControlError, TopicPart};
use super::{append, remove_where, Shard};
use crate::ids::{AppId, RegId};
use crate::proto::{QoS, Subscribe, Unsubscribe};
use crate::push::valid_name;
use crate::session::{classify_filter, reason, ControlTopic, FilterKind};
use crate::store::{StoreJob, WriteOp};

impl Shard {
    /// Joins `regid` to `topic`; Ok(false) if it already was a member.
    fn join_topic(&mut self, regid: RegId, topic: &str) -> Result<bool, ControlError> {
        let limits = (self.shared.config.max_topics_per_device, self.shared.config.max_topics_per_app);
        let device = self.devices.get(&regid).ok_or(ControlError::UnknownDevice)?;
        let app_id = device.record.app_id;
        if let Some(id) = self.topics.id(app_id, topic) {
            if device.topics().iter().any(|&(t, _)| t == id) {
                return Ok(false);
            }
        }
        if device.topics().len() >= limits.0 {
            return Err(ControlError::QuotaExceeded(format!("a device joins at most {} topics", limits.0)));
        }
        if self.topics.id(app_id, topic).is_none() && !self.shared.app_topics.appeared(app_id, topic, limits.1) {
            return Err(ControlError::QuotaExceeded(format!("an app has at most {} topics", limits.1)));
        }
        let (id, _) = self.topics.join(app_id, topic, regid);
        let seq = self.seq.next(self.now_unix_ms());
        let device = self.devices.get_mut(&regid).expect("checked above");
        append(&mut device.extras_mut().topics, (id, seq));
        self.writer.submit(StoreJob {
            ops: vec![WriteOp::Subscribe { regid, topic: topic.to_owned(), seq }],
            done: None,
            awaited: false,
        });
        Ok(true)
    }

    /// Removes `regid` from `topic`; false if it was not a member.
    fn leave_topic(&mut self, regid: RegId, topic: &str) -> bool {
        let Some(device) = self.devices.get_mut(&regid) else { return false };
        let app_id = device.record.app_id;
        let Some(id) = self.topics.id(app_id, topic) else { return false };
        let Some(extras) = device.extras.as_mut() else { return false };
        if !remove_where(&mut extras.topics, |&(t, _)| t == id) {
            return false;
        }
        if self.topics.leave(id, &regid) {
            self.shared.app_topics.vanished(app_id, topic);
        }
        self.writer.submit(StoreJob {
            ops: vec![WriteOp::Unsubscribe { regid, topic: topic.to_owned() }],
            done: None,
            awaited: false,
        });
        true
    }

    /// Sets or removes an alias of `regid`, which must belong to `app_id`.
    pub(super) fn change_alias(
        &mut self,
        app_id: AppId,
        regid: RegId,
        alias: &str,
        set: bool,
    ) -> Result<(), ControlError> {
        let max = self.shared.config.max_aliases_per_device;
        let device =
            self.devices.get_mut(&regid).filter(|d| d.record.app_id == app_id).ok_or(ControlError::UnknownDevice)?;
        let has = device.aliases().iter().any(|a| &**a == alias);
        let op = match (set, has) {
            (true, true) | (false, false) => return Ok(()),
            (true, false) => {
                if device.aliases().len() >= max {
                    return Err(ControlError::QuotaExceeded(format!("a device has at most {max} aliases")));
                }
                append(&mut device.extras_mut().aliases, alias.into());
                self.aliases.add(app_id, alias, regid);
                WriteOp::SetAlias { regid, alias: alias.to_owned() }
            }
            (false, true) => {
                remove_where(&mut device.extras_mut().aliases, |a| &**a == alias);
                self.aliases.remove(app_id, alias, &regid);
                WriteOp::UnsetAlias { regid, alias: alias.to_owned() }
            }
        };
        self.writer.submit(StoreJob { ops: vec![op], done: None, awaited: false });
        Ok(())
    }

    /// Sets or clears a device's quiet hours; pushes held by them go out when they end.
    pub(super) fn set_quiet(
        &mut self,
        app_id: AppId,
        regid: RegId,
        hours: Option<crate::push::QuietHours>,
    ) -> Result<(), ControlError> {
        let device =
            self.devices.get_mut(&regid).filter(|d| d.record.app_id == app_id).ok_or(ControlError::UnknownDevice)?;
        device.extras_mut().quiet = hours;
        let live = device.conn;
        self.writer.submit(StoreJob { ops: vec![WriteOp::Quiet { regid, hours }], done: None, awaited: false });
        if let Some(key) = live {
            // Cleared or moved: whatever waited may go now.
            self.conns[key as usize].backlog = true;
            self.pump(key);
            self.flush(key);
        }
        Ok(())
    }

    /// A new token for one of the app's devices; a live connection with the old one is closed.
    pub(super) fn rotate_token(&mut self, app_id: AppId, regid: RegId) -> Result<String, ControlError> {
        let device =
            self.devices.get_mut(&regid).filter(|d| d.record.app_id == app_id).ok_or(ControlError::UnknownDevice)?;
        let token = crate::ids::random_secret::<16>();
        device.record.token_hash = crate::ids::secret_hash(&token);
        let record = device.record;
        let live = device.conn;
        self.writer.submit(StoreJob {
            ops: vec![WriteOp::RegisterDevice { regid, record }],
            done: None,
            awaited: false,
        });
        if let Some(key) = live {
            self.conns[key as usize].session.close(reason::NOT_AUTHORIZED);
            self.close_conn(key, crate::session::CloseReason::Server);
        }
        Ok(token)
    }

    /// The app server adds devices to a topic or removes them.
    pub(super) fn change_topic_members(
        &mut self,
        app_id: AppId,
        topic: &str,
        regids: Vec<RegId>,
        join: bool,
    ) -> TopicPart {
        let mut part = TopicPart::default();
        for regid in regids {
            if self.devices.get(&regid).is_none_or(|d| d.record.app_id != app_id) {
                part.invalid.push(regid);
                continue;
            }
            let changed =
                if join { self.join_topic(regid, topic).unwrap_or(false) } else { self.leave_topic(regid, topic) };
            part.changed += u64::from(changed);
        }
        part
    }

    pub(super) fn on_subscribe(&mut self, key: u32, subscribe: Box<Subscribe>) {
        let Some(regid) = self.conns[key as usize].device else { return };
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut why: Option<String> = None;
        let v5 = matches!(self.conns[key as usize].session.version(), crate::proto::Version::V5);
        for filter in &subscribe.filters {
            let code = match (
                self.conns[key as usize].session.filter_code(&filter.filter, filter.qos),
                classify_filter(&filter.filter),
            ) {
                (Some(code), _) => code,
                (None, FilterKind::Topic(name)) => match self.join_topic(regid, name) {
                    Ok(_) => u8::from(filter.qos != QoS::AtMostOnce),
                    Err(e) => {
                        tracing::debug!(shard = self.index, error = %e, "subscription refused");
                        why.get_or_insert_with(|| e.to_string());
                        if v5 {
                            reason::QUOTA_EXCEEDED
                        } else {
                            reason::V311_SUBSCRIBE_FAILURE
                        }
                    }
                },
                (None, _) => reason::UNSPECIFIED,
            };
            if code >= reason::UNSPECIFIED {
                why.get_or_insert_with(|| crate::session::PROFILE_FILTERS.to_owned());
            }
            codes.push(code);
        }
        self.conns[key as usize].session.suback_with_reason(subscribe.packet_id, codes, why);
    }

    pub(super) fn on_unsubscribe(&mut self, key: u32, unsubscribe: Box<Unsubscribe>) {
        let Some(regid) = self.conns[key as usize].device else { return };
        let codes = unsubscribe
            .filters
            .iter()
            .map(|filter| match classify_filter(filter) {
                FilterKind::Inbox => reason::SUCCESS,
                FilterKind::Topic(name) if self.leave_topic(regid, name) => reason::SUCCESS,
                _ => reason::NO_SUBSCRIPTION_EXISTED,
            })
            .collect();
        self.conns[key as usize].session.unsuback(unsubscribe.packet_id, codes);
    }

    /// A click report: the payload is a message id this device received.
    fn on_click(&mut self, regid: RegId, payload: &[u8]) -> u8 {
        let Some(id) = std::str::from_utf8(payload).ok().and_then(crate::ids::parse_message_id) else {
            return reason::PAYLOAD_FORMAT_INVALID;
        };
        let Some(app_id) = self.devices.get(&regid).map(|d| d.record.app_id) else { return reason::UNSPECIFIED };
        // The message's counts sit in the device's partition (its own messages) or in the
        // shard's group partition (topics, broadcast).
        let own = self.stores.get(&regid.partition()).and_then(|s| s.message_stats(app_id, id).ok().flatten());
        let group = self.stores.get(&self.group_partition).and_then(|s| s.message_stats(app_id, id).ok().flatten());
        let partition = match (own, group) {
            (Some(_), _) => regid.partition(),
            (None, Some(_)) => self.group_partition,
            (None, None) => return reason::PAYLOAD_FORMAT_INVALID,
        };
        self.writer.submit(StoreJob {
            ops: vec![WriteOp::Clicked { partition, regid, id }],
            done: None,
            awaited: false,
        });
        reason::SUCCESS
    }

    pub(super) fn on_control(&mut self, key: u32, topic: ControlTopic, payload: &[u8], packet_id: Option<u16>) {
        let Some(regid) = self.conns[key as usize].device else { return };
        let code = match topic {
            ControlTopic::AliasSet | ControlTopic::AliasUnset => match std::str::from_utf8(payload) {
                Ok(alias) if valid_name(alias) => {
                    let app_id = self.devices.get(&regid).map_or(0, |d| d.record.app_id);
                    match self.change_alias(app_id, regid, alias, topic == ControlTopic::AliasSet) {
                        Ok(()) => reason::SUCCESS,
                        Err(ControlError::QuotaExceeded(_)) => reason::QUOTA_EXCEEDED,
                        Err(_) => reason::UNSPECIFIED,
                    }
                }
                _ => reason::PAYLOAD_FORMAT_INVALID,
            },
            ControlTopic::Click => self.on_click(regid, payload),
            ControlTopic::Quiet => {
                let hours =
                    if payload.is_empty() { Ok(None) } else { crate::push::QuietHours::from_json(payload).map(Some) };
                match hours {
                    Ok(hours) => {
                        let app_id = self.devices.get(&regid).map_or(0, |d| d.record.app_id);
                        match self.set_quiet(app_id, regid, hours) {
                            Ok(()) => reason::SUCCESS,
                            Err(_) => reason::UNSPECIFIED,
                        }
                    }
                    Err(_) => reason::PAYLOAD_FORMAT_INVALID,
                }
            }
        };
        let mut events = Vec::new();
        self.conns[key as usize].session.ack_control(packet_id, code, &mut events);
        for event in events {
            if let crate::session::Event::Close(reason) = event {
                self.close_conn(key, reason);
            }
        }
    }
}
