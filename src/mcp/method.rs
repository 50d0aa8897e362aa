//! MCP method names, read once when a message is decoded, so the rest of the
//! proxy compares enum values, never strings. A method this list does not
//! name is `Other`, with its text; a message without a method (a response,
//! or a request with no JSON-RPC body) has `None` where a method would be.

/// A JSON-RPC `method` of MCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method<'a> {
    Initialize,
    Ping,
    ToolsList,
    ToolsCall,
    PromptsList,
    PromptsGet,
    ResourcesList,
    ResourcesTemplatesList,
    ResourcesRead,
    ResourcesSubscribe,
    ResourcesUnsubscribe,
    CompletionComplete,
    LoggingSetLevel,
    ServerDiscover,
    SubscriptionsListen,
    NotificationsInitialized,
    NotificationsCancelled,
    /// Any other method, as sent.
    Other(&'a str),
}

/// Every named method with its text; the first 16 are the methods
/// `metrics` counts by name, in its order.
const NAMED: [(Method<'static>, &str); 17] = [
    (Method::Initialize, "initialize"),
    (
        Method::NotificationsInitialized,
        "notifications/initialized",
    ),
    (Method::Ping, "ping"),
    (Method::ToolsList, "tools/list"),
    (Method::ToolsCall, "tools/call"),
    (Method::ResourcesList, "resources/list"),
    (Method::ResourcesTemplatesList, "resources/templates/list"),
    (Method::ResourcesRead, "resources/read"),
    (Method::ResourcesSubscribe, "resources/subscribe"),
    (Method::PromptsList, "prompts/list"),
    (Method::PromptsGet, "prompts/get"),
    (Method::CompletionComplete, "completion/complete"),
    (Method::LoggingSetLevel, "logging/setLevel"),
    (Method::ServerDiscover, "server/discover"),
    (Method::SubscriptionsListen, "subscriptions/listen"),
    (Method::NotificationsCancelled, "notifications/cancelled"),
    (Method::ResourcesUnsubscribe, "resources/unsubscribe"),
];

impl<'a> Method<'a> {
    /// The method a message names.
    pub fn parse(text: &'a str) -> Method<'a> {
        // Length first: most comparisons end there.
        NAMED
            .iter()
            .find(|(_, t)| t.len() == text.len() && *t == text)
            .map_or(Method::Other(text), |(m, _)| *m)
    }

    /// The method's text, as it is sent.
    pub fn as_str(self) -> &'a str {
        match self {
            Method::Other(text) => text,
            named => NAMED
                .iter()
                .find(|(m, _)| *m == named)
                .map_or("", |(_, t)| t),
        }
    }

    /// The text of a named method (`None` for `Other`), without a borrow.
    pub fn named_str(self) -> Option<&'static str> {
        NAMED.iter().find(|(m, _)| *m == self).map(|(_, t)| *t)
    }

    /// Position in [`Method::NAMES`] (`None` for `Other`).
    pub fn index(self) -> Option<usize> {
        NAMED.iter().position(|(m, _)| *m == self)
    }

    /// The named methods' texts, in index order.
    pub const NAMES: [&'static str; 17] = {
        let mut names = [""; 17];
        let mut i = 0;
        while i < NAMED.len() {
            names[i] = NAMED[i].1;
            i += 1;
        }
        names
    };
}

impl std::fmt::Display for Method<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_reads_back() {
        for (i, name) in Method::NAMES.iter().enumerate() {
            let m = Method::parse(name);
            assert!(!matches!(m, Method::Other(_)), "{name}");
            assert_eq!(m.as_str(), *name);
            assert_eq!(m.index(), Some(i));
        }
        assert_eq!(Method::parse("tools/calls"), Method::Other("tools/calls"));
        assert_eq!(Method::parse("Tools/call"), Method::Other("Tools/call"));
        assert_eq!(Method::Other("x/y").as_str(), "x/y");
        assert_eq!(Method::Other("x/y").index(), None);
    }
}
