//! Acting on a message in the open channel, as on Discord: select it (click), then reply,
//! react, edit (our own), delete (our own, or anyone's with Manage Messages) or pin (Manage
//! Messages). Deleting asks first and says plainly what deletion can and cannot do.
//!
//! The node decides and stores; the state only turns clicks into [`Command`]s and keeps the
//! selection, the reply or edit in progress and the delete to confirm.

use std::time::{Duration, Instant};

use super::{AppState, View};
use crate::backend::Command;

/// How long "X is typing" stays up after a notice.
pub const TYPING_SHOWN: Duration = Duration::from_secs(8);
/// Typing notices sent at most this often per channel.
pub const TYPING_EVERY: Duration = Duration::from_secs(4);
/// Typists remembered per channel.
const MAX_TYPISTS: usize = 16;

/// Reactions offered in one click.
pub const QUICK_REACTIONS: [&str; 5] = ["👍", "❤️", "😂", "🎉", "👀"];

/// Messages kept per open thread.
pub const MAX_THREAD_MESSAGES: usize = 500;

/// Threads of channels: their lists, the one open in the thread window, unread counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Threads {
    /// Thread lists per (guild, channel), newest activity first.
    pub lists: std::collections::HashMap<(String, u64), Vec<crate::backend::ThreadInfo>>,
    /// The thread list window is open.
    pub list_open: bool,
    /// The thread shown in the thread window: (guild, channel, thread id).
    pub open: Option<(String, u64, String)>,
    /// The open thread's messages, oldest first (at most [`MAX_THREAD_MESSAGES`]).
    pub messages: Vec<super::Entry>,
    /// The thread window's composer.
    pub composer: String,
    /// Name typed for a new thread.
    pub new_name: String,
    /// Messages arrived in threads not open, per thread id.
    pub unread: std::collections::HashMap<String, u32>,
}

/// The search window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Search {
    /// The window is open.
    pub open: bool,
    /// What the user typed.
    pub text: String,
    /// Only the open channel.
    pub this_channel: bool,
    /// Only this author (nickname or user id; empty: anyone).
    pub author: String,
    /// The last results: (text searched, hits).
    pub results: Option<(String, Vec<crate::backend::SearchHit>)>,
}

/// Who is typing in one channel: (user, name, when the notice came).
pub type Typists = Vec<(String, String, Instant)>;

/// What the user is doing with messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageActions {
    /// The selected message (id) in the open channel.
    pub selected: Option<String>,
    /// Replying to this message: (channel view, id, "author: first words").
    pub replying: Option<(View, String, String)>,
    /// Editing this message of ours: (channel view, id).
    pub editing: Option<(View, String)>,
    /// Asked to delete this message: (channel view, id); waits for "Delete" or "Cancel".
    pub confirm_delete: Option<(View, String)>,
    /// Who is typing where: (guild, channel) -> (user, name, when the notice came).
    pub typing: std::collections::HashMap<(String, u64), Typists>,
    /// When we last told a channel we were typing.
    pub typing_sent: Option<(View, Instant)>,
    /// Threads.
    pub threads: Threads,
    /// The pinned-messages window: open, and the list per (guild, channel).
    pub pins_open: bool,
    /// Pinned messages per (guild, channel), most recently pinned first.
    pub pins: std::collections::HashMap<(String, u64), Vec<crate::backend::PinInfo>>,
    /// Local search.
    pub search: Search,
    /// A message to scroll to and select once its channel's timeline holds it (a search
    /// result's "Jump").
    pub jump_to: Option<String>,
}

impl MessageActions {
    /// The reply to attach to a message sent in `view`, consumed.
    pub fn take_reply(&mut self, view: &View) -> Option<String> {
        match self.replying.take() {
            Some((v, id, _)) if &v == view => Some(id),
            other => {
                self.replying = other;
                None
            }
        }
    }

    /// Forgets a message that is gone.
    pub fn forget(&mut self, id: &str) {
        if self.selected.as_deref() == Some(id) {
            self.selected = None;
        }
        if self.replying.as_ref().is_some_and(|(_, r, _)| r == id) {
            self.replying = None;
        }
        if self.editing.as_ref().is_some_and(|(_, r)| r == id) {
            self.editing = None;
        }
        if self.confirm_delete.as_ref().is_some_and(|(_, r)| r == id) {
            self.confirm_delete = None;
        }
    }
}

impl AppState {
    /// "Search": opens or closes the search window.
    pub fn on_toggle_search(&mut self) {
        self.messages.search.open = !self.messages.search.open;
    }

    /// "Search" in the search window (or Enter).
    pub fn on_search(&mut self) -> Vec<Command> {
        let q = &self.messages.search;
        let text = q.text.trim().to_owned();
        let author = (!q.author.trim().is_empty()).then(|| q.author.trim().to_owned());
        if text.is_empty() && author.is_none() {
            self.error("type something to search for");
            return Vec::new();
        }
        let (guild, channel) = match (&self.view, q.this_channel) {
            (View::Channel { guild, channel }, true) => (Some(guild.clone()), Some(*channel)),
            (View::Channel { guild, .. }, false) => (Some(guild.clone()), None),
            _ => (self.guild.clone(), None),
        };
        vec![Command::Search {
            text,
            guild,
            channel,
            author,
        }]
    }

    /// "Jump" on a search result: opens its channel and scrolls to the message.
    pub fn on_jump(&mut self, hit: &crate::backend::SearchHit) -> Vec<Command> {
        self.guild = Some(hit.guild.clone());
        let cmds = self.on_select_channel(&hit.guild, hit.channel);
        self.messages.jump_to = Some(hit.id.clone());
        cmds
    }

    /// "Pins": opens (or closes) the open channel's pinned messages, loading them.
    pub fn on_toggle_pins(&mut self) -> Vec<Command> {
        self.messages.pins_open = !self.messages.pins_open;
        match (self.messages.pins_open, self.channel_of_view()) {
            (true, Some((guild, channel))) => vec![Command::LoadPins { guild, channel }],
            _ => Vec::new(),
        }
    }

    /// "Threads": opens (or closes) the open channel's thread list, loading it.
    pub fn on_toggle_threads(&mut self) -> Vec<Command> {
        let t = &mut self.messages.threads;
        t.list_open = !t.list_open;
        match (t.list_open, self.channel_of_view()) {
            (true, Some((guild, channel))) => vec![Command::LoadThreads { guild, channel }],
            _ => Vec::new(),
        }
    }

    /// "Create thread" in the list window (named by the user), or "Thread" on the selected
    /// message (named after its first words, as Discord does; renamed later from the CLI).
    pub fn on_create_thread(&mut self, from_selected: bool) -> Vec<Command> {
        let Some((guild, channel)) = self.channel_of_view() else {
            return Vec::new();
        };
        let (name, from) = if from_selected {
            let Some(e) = self.selected_entry() else {
                return Vec::new();
            };
            let words: String = e
                .text
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(60)
                .collect();
            let name = if words.trim().is_empty() {
                "Thread".to_owned()
            } else {
                words.trim().to_owned()
            };
            (name, Some(e.id.clone()))
        } else {
            (self.messages.threads.new_name.trim().to_owned(), None)
        };
        if let Err(e) = securecomm_node::guild::wire::check_thread_name(&name) {
            self.error(e);
            return Vec::new();
        }
        self.messages.threads.new_name.clear();
        self.messages.threads.list_open = true;
        self.messages.selected = None;
        vec![Command::CreateThread {
            guild,
            channel,
            name,
            from,
        }]
    }

    /// "Open" on a thread of the list.
    pub fn on_open_thread(&mut self, thread: &str) -> Vec<Command> {
        let Some((guild, channel)) = self.channel_of_view() else {
            return Vec::new();
        };
        let t = &mut self.messages.threads;
        t.open = Some((guild.clone(), channel, thread.to_owned()));
        t.messages.clear();
        t.composer.clear();
        t.unread.remove(thread);
        vec![Command::LoadThread {
            guild,
            channel,
            thread: thread.to_owned(),
        }]
    }

    /// Closes the thread window.
    pub fn on_close_thread(&mut self) {
        self.messages.threads.open = None;
        self.messages.threads.messages.clear();
    }

    /// Enter (or "Send") in the thread window.
    pub fn on_thread_send(&mut self) -> Vec<Command> {
        let text = self.messages.threads.composer.trim_end().to_owned();
        let Some((guild, channel, thread)) = self.messages.threads.open.clone() else {
            return Vec::new();
        };
        if text.trim().is_empty() {
            return Vec::new();
        }
        if self.open_thread().is_some_and(|t| t.archived) {
            self.error("this thread is archived; unarchive it to post");
            return Vec::new();
        }
        self.messages.threads.composer.clear();
        vec![Command::ThreadPost {
            guild,
            channel,
            thread,
            text,
        }]
    }

    /// "Archive" / "Unarchive" in the thread window.
    pub fn on_archive_thread(&mut self) -> Vec<Command> {
        let Some((guild, channel, thread)) = self.messages.threads.open.clone() else {
            return Vec::new();
        };
        let archived = !self.open_thread().is_some_and(|t| t.archived);
        vec![Command::ArchiveThread {
            guild,
            channel,
            thread,
            archived,
        }]
    }

    /// The open thread as listed.
    pub fn open_thread(&self) -> Option<&crate::backend::ThreadInfo> {
        let (g, c, id) = self.messages.threads.open.as_ref()?;
        self.messages
            .threads
            .lists
            .get(&(g.clone(), *c))?
            .iter()
            .find(|t| &t.id == id)
    }

    /// A thread message arrived: into the open thread, or counted unread.
    pub(super) fn on_thread_message(&mut self, thread: String, e: super::Entry) {
        let t = &mut self.messages.threads;
        if t.open.as_ref().is_some_and(|(_, _, id)| *id == thread) {
            if !t.messages.iter().any(|m| m.id == e.id) {
                t.messages.push(e);
                t.messages.sort_by_key(|m| m.sent_at);
                if t.messages.len() > MAX_THREAD_MESSAGES {
                    t.messages.remove(0);
                }
            }
        } else if t.unread.len() < 4096 || t.unread.contains_key(&thread) {
            *t.unread.entry(thread).or_insert(0) += 1;
        }
    }

    /// The composer's text changed: tell the channel we are typing (throttled; not when the
    /// user turned typing indicators off, or the composer is empty).
    pub fn on_composer_changed(&mut self) -> Vec<Command> {
        if !self.settings.prefs.typing_indicators || self.composer.trim().is_empty() {
            return Vec::new();
        }
        let Some((guild, channel)) = self.channel_of_view() else {
            return Vec::new();
        };
        let now = Instant::now();
        if self
            .messages
            .typing_sent
            .as_ref()
            .is_some_and(|(v, at)| *v == self.view && now.duration_since(*at) < TYPING_EVERY)
        {
            return Vec::new();
        }
        self.messages.typing_sent = Some((self.view.clone(), now));
        vec![Command::Typing { guild, channel }]
    }

    /// A member's typing notice.
    pub fn on_typing(&mut self, guild: String, channel: u64, user: String, name: String) {
        if !self.settings.prefs.typing_indicators {
            return;
        }
        let now = Instant::now();
        let list = self.messages.typing.entry((guild, channel)).or_default();
        list.retain(|(u, _, at)| *u != user && now.duration_since(*at) < TYPING_SHOWN);
        if list.len() < MAX_TYPISTS {
            list.push((user, name, now));
        }
    }

    /// "Ann is typing…" for the open channel, if anyone is.
    pub fn typing_line(&self) -> Option<String> {
        let (guild, channel) = self.channel_of_view()?;
        let now = Instant::now();
        let names: Vec<&str> = self
            .messages
            .typing
            .get(&(guild, channel))?
            .iter()
            .filter(|(_, _, at)| now.duration_since(*at) < TYPING_SHOWN)
            .map(|(_, n, _)| n.as_str())
            .collect();
        match names.as_slice() {
            [] => None,
            [one] => Some(format!("{one} is typing…")),
            [a, b] => Some(format!("{a} and {b} are typing…")),
            _ => Some("Several people are typing…".to_owned()),
        }
    }

    fn channel_of_view(&self) -> Option<(String, u64)> {
        match &self.view {
            View::Channel { guild, channel } => Some((guild.clone(), *channel)),
            _ => None,
        }
    }

    fn selected_entry(&self) -> Option<&super::Entry> {
        let id = self.messages.selected.as_deref()?;
        self.current_timeline()?.find(id)
    }

    /// Whether we may manage others' messages in the open channel.
    pub fn may_manage_messages(&self) -> bool {
        let Some((guild, channel)) = self.channel_of_view() else {
            return false;
        };
        self.channels
            .get(&guild)
            .and_then(|cs| cs.iter().find(|c| c.id == channel))
            .is_some_and(|c| {
                c.my_permissions
                    .iter()
                    .any(|p| p == "manage_messages" || p == "administrator")
            })
    }

    /// Whether the selected message is ours.
    pub fn selected_is_mine(&self) -> bool {
        let me = self.me.as_ref().map(|m| m.user_id.as_str());
        self.selected_entry()
            .is_some_and(|e| Some(e.sender.as_str()) == me)
    }

    /// A click on a message's line: selects it (again: unselects). Channels only; DMs have no
    /// message actions yet.
    pub fn on_select_message(&mut self, id: &str) {
        if !matches!(self.view, View::Channel { .. }) || id.starts_with("outbox ") {
            return;
        }
        if self.messages.selected.as_deref() == Some(id) {
            self.messages.selected = None;
        } else {
            self.messages.selected = Some(id.to_owned());
        }
    }

    /// "Reply": the next message sent here answers the selected one.
    pub fn on_reply(&mut self) {
        let Some(e) = self.selected_entry() else {
            return;
        };
        let quote = super::quote_of(Some(e));
        let id = e.id.clone();
        self.messages.editing = None;
        self.messages.replying = Some((self.view.clone(), id, quote));
        self.messages.selected = None;
    }

    /// A reaction button on the selected message (or a reaction chip under any message):
    /// adds ours, or removes it if we had reacted with that emoji.
    pub fn on_react(&mut self, id: &str, emoji: &str) -> Vec<Command> {
        let Some((guild, channel)) = self.channel_of_view() else {
            return Vec::new();
        };
        let me = self.me.as_ref().map(|m| m.user_id.clone());
        let had = self
            .current_timeline()
            .and_then(|t| t.find(id))
            .is_some_and(|e| {
                e.reactions
                    .iter()
                    .any(|(x, users)| x == emoji && me.as_ref().is_some_and(|m| users.contains(m)))
            });
        vec![Command::React {
            guild,
            channel,
            msg: id.to_owned(),
            emoji: emoji.to_owned(),
            add: !had,
        }]
    }

    /// "Edit" on our selected message: the composer takes its text; Enter saves.
    pub fn on_edit(&mut self) {
        if !self.selected_is_mine() {
            self.error("you can only edit your own messages");
            return;
        }
        let Some(e) = self.selected_entry() else {
            return;
        };
        let (id, text) = (e.id.clone(), e.text.clone());
        self.messages.replying = None;
        self.messages.editing = Some((self.view.clone(), id));
        self.composer = text;
        self.messages.selected = None;
    }

    /// Leaves a reply or an edit without sending (an edit gives the composer back empty).
    pub fn on_cancel_compose(&mut self) {
        if self.messages.editing.take().is_some() {
            self.composer.clear();
        }
        self.messages.replying = None;
    }

    /// Sends the composer as an edit, if an edit is in progress here.
    pub(super) fn send_edit(&mut self, text: &str) -> Option<Vec<Command>> {
        let (view, id) = self.messages.editing.clone()?;
        if view != self.view {
            return None;
        }
        let (guild, channel) = self.channel_of_view()?;
        self.messages.editing = None;
        self.composer.clear();
        Some(vec![Command::Edit {
            guild,
            channel,
            msg: id,
            text: text.to_owned(),
        }])
    }

    /// "Delete": asks first.
    pub fn on_delete(&mut self) {
        if !self.selected_is_mine() && !self.may_manage_messages() {
            self.error("you may delete only your own messages here");
            return;
        }
        if let Some(id) = self.messages.selected.take() {
            self.messages.confirm_delete = Some((self.view.clone(), id));
        }
    }

    /// The delete confirmation's answer.
    pub fn on_confirm_delete(&mut self, yes: bool) -> Vec<Command> {
        let Some((view, id)) = self.messages.confirm_delete.take() else {
            return Vec::new();
        };
        let View::Channel { guild, channel } = view else {
            return Vec::new();
        };
        if !yes {
            return Vec::new();
        }
        self.messages.selected = None;
        vec![Command::Delete {
            guild,
            channel,
            msg: id,
        }]
    }

    /// "Pin" / "Unpin" on the selected message.
    pub fn on_pin(&mut self) -> Vec<Command> {
        let Some((guild, channel)) = self.channel_of_view() else {
            return Vec::new();
        };
        let Some(e) = self.selected_entry() else {
            return Vec::new();
        };
        let (id, pinned) = (e.id.clone(), !e.pinned);
        self.messages.selected = None;
        vec![Command::Pin {
            guild,
            channel,
            msg: id,
            pinned,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_channel() -> AppState {
        let mut s = AppState::new("/tmp/x".into(), true);
        s.view = View::Channel {
            guild: "g".into(),
            channel: 1,
        };
        s
    }

    #[test]
    fn typing_is_throttled_shown_for_a_while_and_can_be_turned_off() {
        let mut s = in_channel();
        assert!(s.on_composer_changed().is_empty(), "nothing typed yet");
        s.composer = "h".into();
        assert!(matches!(
            s.on_composer_changed().as_slice(),
            [Command::Typing { channel: 1, .. }]
        ));
        s.composer = "hi".into();
        assert!(
            s.on_composer_changed().is_empty(),
            "once per {TYPING_EVERY:?}"
        );

        assert_eq!(s.typing_line(), None);
        s.on_typing("g".into(), 1, "aa".into(), "Ann".into());
        s.on_typing("g".into(), 1, "aa".into(), "Ann".into());
        assert_eq!(s.typing_line().as_deref(), Some("Ann is typing…"));
        s.on_typing("g".into(), 1, "bb".into(), "Ben".into());
        assert_eq!(s.typing_line().as_deref(), Some("Ann and Ben are typing…"));
        s.on_typing("g".into(), 2, "cc".into(), "Cat".into());
        assert_eq!(
            s.typing_line().as_deref(),
            Some("Ann and Ben are typing…"),
            "per channel"
        );

        // Off: nothing sent, nothing shown.
        let mut s = in_channel();
        s.settings.prefs.typing_indicators = false;
        s.composer = "h".into();
        assert!(s.on_composer_changed().is_empty());
        s.on_typing("g".into(), 1, "aa".into(), "Ann".into());
        assert_eq!(s.typing_line(), None);
    }

    #[test]
    fn a_reply_is_used_once_and_only_in_its_channel() {
        let mut s = in_channel();
        s.messages.replying = Some((s.view.clone(), "m1".into(), "Ann: hi".into()));
        let other = View::Channel {
            guild: "g".into(),
            channel: 2,
        };
        assert_eq!(s.messages.take_reply(&other), None);
        assert_eq!(
            s.messages.take_reply(&s.view.clone()).as_deref(),
            Some("m1")
        );
        assert_eq!(s.messages.take_reply(&s.view.clone()), None);
    }
}
