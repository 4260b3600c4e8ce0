//! The reference device's notification tray: at most [`MAX_CATEGORIES`] notification
//! categories (`notify_id`) are shown at once; a new notification of a shown category
//! replaces the old one, and a new category beyond the limit pushes out the oldest.

use std::collections::VecDeque;

/// Categories shown at once, as the design's device contract says.
pub const MAX_CATEGORIES: usize = 5;

/// What showing one notification did to the tray.
#[derive(Debug, PartialEq, Eq)]
pub enum TrayChange {
    /// A new category took a free place.
    Added,
    /// The category was shown: this message id was replaced.
    Replaced(String),
    /// The tray was full: this category (and its message id) went out.
    Evicted { notify_id: i64, id: String },
}

/// Shown notifications, oldest first: (notify_id, message id).
#[derive(Debug, Default)]
pub struct Tray {
    shown: VecDeque<(i64, String)>,
}

impl Tray {
    /// Shows notification `id` of category `notify_id`.
    pub fn show(&mut self, notify_id: i64, id: String) -> TrayChange {
        if let Some(pos) = self.shown.iter().position(|(n, _)| *n == notify_id) {
            let (_, old) = self.shown.remove(pos).expect("position is in range");
            self.shown.push_back((notify_id, id));
            return TrayChange::Replaced(old);
        }
        let change = if self.shown.len() >= MAX_CATEGORIES {
            let (notify_id, id) = self.shown.pop_front().expect("the tray is full");
            TrayChange::Evicted { notify_id, id }
        } else {
            TrayChange::Added
        };
        self.shown.push_back((notify_id, id));
        debug_assert!(self.shown.len() <= MAX_CATEGORIES);
        change
    }

    /// The categories shown, oldest first.
    pub fn categories(&self) -> Vec<i64> {
        self.shown.iter().map(|(n, _)| *n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_categories_at_most_and_same_category_replaces() {
        let mut tray = Tray::default();
        for n in 1..=5 {
            assert_eq!(tray.show(n, format!("m{n}")), TrayChange::Added);
        }
        assert_eq!(tray.show(3, "m3b".into()), TrayChange::Replaced("m3".into()));
        assert_eq!(tray.show(6, "m6".into()), TrayChange::Evicted { notify_id: 1, id: "m1".into() });
        assert_eq!(tray.categories(), vec![2, 4, 5, 3, 6]);
    }
}
