//! A shard's indexes of app topics (tags) and aliases: which of its devices joined a
//! topic or carry an alias. Plain data; the shard keeps them in step with the store.

use crate::ids::{AppId, RegId};
use foldhash::{HashMap, HashSet, HashSetExt};
use slab::Slab;

/// One app topic on this shard.
#[derive(Debug)]
pub(super) struct Topic {
    pub app_id: AppId,
    pub name: Box<str>,
    pub members: HashSet<RegId>,
}

/// Topics by app and name, each with its members on this shard.
#[derive(Debug, Default)]
pub(super) struct TopicIndex {
    /// Keyed app first so a lookup by `&str` allocates nothing (a fan-out looks up its
    /// topics for every member).
    by_name: HashMap<AppId, HashMap<Box<str>, u32>>,
    topics: Slab<Topic>,
}

impl TopicIndex {
    pub fn id(&self, app_id: AppId, name: &str) -> Option<u32> {
        self.by_name.get(&app_id)?.get(name).copied()
    }

    pub fn get(&self, id: u32) -> Option<&Topic> {
        self.topics.get(id as usize)
    }

    /// Adds `regid` to the topic, creating it; answers the topic id and whether it is new here.
    pub fn join(&mut self, app_id: AppId, name: &str, regid: RegId) -> (u32, bool) {
        let (id, created) = match self.id(app_id, name) {
            Some(id) => (id, false),
            None => {
                let id = self.topics.insert(Topic { app_id, name: name.into(), members: HashSet::new() }) as u32;
                self.by_name.entry(app_id).or_default().insert(name.into(), id);
                (id, true)
            }
        };
        self.topics[id as usize].members.insert(regid);
        (id, created)
    }

    /// Removes `regid` from topic `id`; answers whether the topic is now gone from this shard.
    pub fn leave(&mut self, id: u32, regid: &RegId) -> bool {
        let Some(topic) = self.topics.get_mut(id as usize) else { return false };
        topic.members.remove(regid);
        if !topic.members.is_empty() {
            return false;
        }
        let topic = self.topics.remove(id as usize);
        if let Some(names) = self.by_name.get_mut(&topic.app_id) {
            names.remove(&topic.name);
            if names.is_empty() {
                self.by_name.remove(&topic.app_id);
            }
        }
        true
    }
}

/// Devices by (app, alias) on this shard. One alias may sit on several devices.
#[derive(Debug, Default)]
pub(super) struct AliasIndex {
    map: HashMap<(AppId, Box<str>), Vec<RegId>>,
}

impl AliasIndex {
    pub fn add(&mut self, app_id: AppId, alias: &str, regid: RegId) {
        let devices = self.map.entry((app_id, Box::from(alias))).or_default();
        if !devices.contains(&regid) {
            devices.push(regid);
        }
    }

    pub fn remove(&mut self, app_id: AppId, alias: &str, regid: &RegId) {
        let key = (app_id, Box::from(alias));
        if let Some(devices) = self.map.get_mut(&key) {
            devices.retain(|r| r != regid);
            if devices.is_empty() {
                self.map.remove(&key);
            }
        }
    }

    pub fn get(&self, app_id: AppId, alias: &str) -> &[RegId] {
        self.map.get(&(app_id, Box::from(alias))).map_or(&[], |v| v.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_per_app_and_vanish_when_empty() {
        let mut index = TopicIndex::default();
        let (a, b) = (RegId::generate(0), RegId::generate(0));
        let (id, created) = index.join(1, "news", a);
        assert!(created);
        assert_eq!(index.join(1, "news", b), (id, false));
        assert_ne!(index.join(2, "news", a).0, id, "another app's topic of the same name is another topic");
        assert!(!index.leave(id, &a));
        assert!(index.leave(id, &b));
        assert_eq!(index.id(1, "news"), None);
    }

    #[test]
    fn aliases_hold_several_devices() {
        let mut index = AliasIndex::default();
        let (a, b) = (RegId::generate(0), RegId::generate(0));
        index.add(1, "user", a);
        index.add(1, "user", b);
        index.add(1, "user", b);
        assert_eq!(index.get(1, "user"), &[a, b]);
        assert!(index.get(2, "user").is_empty());
        index.remove(1, "user", &a);
        assert_eq!(index.get(1, "user"), &[b]);
    }
}
