//! The built-in detectors: each has a stable name, a group, and how it is
//! found. Most start with a literal (an anchor, found case-insensitively by
//! the matcher's one literal search) and are confirmed by an anchored
//! regex; the rest are found from a byte (`@`, ESC), from the code points
//! they are made of, or from digit runs, with validators (Luhn, mod-97)
//! rejecting look-alikes.

/// A detector's group: `detectors` and `actions` may name it instead of
/// each member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    Secrets,
    Pii,
    Injection,
    Custom,
}

impl Group {
    pub fn name(self) -> &'static str {
        match self {
            Group::Secrets => "secrets",
            Group::Pii => "pii",
            Group::Injection => "injection",
            Group::Custom => "custom",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Group> {
        [Group::Secrets, Group::Pii, Group::Injection, Group::Custom]
            .into_iter()
            .find(|g| g.name() == s)
    }
}

/// The code points a `Chars` detector is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CharClass {
    /// U+E0000–U+E007F: invisible ASCII look-alikes ("ASCII smuggling").
    Tags,
    /// U+202A–U+202E, U+2066–U+2069: text shown in another order than read.
    Bidi,
    /// U+200B–U+200D, U+2060, U+FEFF.
    ZeroWidth,
}

impl CharClass {
    pub(crate) fn of(c: char) -> Option<CharClass> {
        match c {
            '\u{E0000}'..='\u{E007F}' => Some(CharClass::Tags),
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => Some(CharClass::Bidi),
            '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' => Some(CharClass::ZeroWidth),
            _ => None,
        }
    }
}

/// How a built-in detector is found.
#[derive(Clone, Copy, Debug)]
pub(crate) enum How {
    /// `regex`, anchored, tried where one of `anchors` starts (in the forms
    /// `case` says; an anchor written `?xyz` is searched as `xyz` and tried
    /// one byte before it, one byte per `?`), unless a word character
    /// precedes the match and `bounded` is set. With `back`, the match
    /// starts before the anchor: where the run of base64url characters
    /// ending at it starts.
    Anchored {
        anchors: &'static [&'static str],
        case: Case,
        back: bool,
        regex: &'static str,
        bounded: bool,
    },
    /// `regex` run over a string holding `byte`; `anchored`: tried where
    /// `byte` is (as `Anchored`), else run over the whole string once.
    Byte {
        byte: u8,
        regex: &'static str,
        anchored: bool,
    },
    /// A run of code points of one class.
    Chars(CharClass),
    /// 13 to 19 digits, optionally grouped by spaces or dashes (one kind),
    /// the first one 2 to 6 (the major card networks), passing Luhn.
    Card,
    /// A country code, two check digits and the country's account number
    /// length (optionally grouped by single spaces), passing mod-97.
    Iban,
}

/// One built-in detector.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Builtin {
    pub(crate) name: &'static str,
    pub(crate) group: Group,
    pub(crate) how: How,
}

/// The instruction-override phrases, a short curated list (markers, not a
/// defence: a paraphrase passes). Case is ignored and words are separated
/// by any whitespace, except in the anchor (the first words): lowercase,
/// Capitalised or in capitals, single spaces.
const OVERRIDE_PHRASES: &str = concat!(
    r"(?i)(?:",
    r"ignore\s+(?:(?:all|any|the|your|my|of|these)\s+){0,3}(?:previous|prior|above|earlier|preceding|former|system|developer|original)\s+(?:instructions?|prompts?|directions?|rules|messages|guidelines|context)",
    r"|ignore\s+(?:all|everything)\s+(?:above|before)",
    r"|disregard\s+(?:(?:all|any|the|your|my)\s+){0,3}(?:previous|prior|above|earlier|preceding|system|developer|instructions)",
    r"|forget\s+(?:(?:all|any|the|your|my)\s+){0,3}(?:(?:previous|prior|earlier)\s+)?(?:instructions|rules|guidelines)",
    r"|you\s+are\s+now",
    r"|system\s+prompt",
    r"|new\s+instructions\s*:",
    r"|do\s+not\s+(?:tell|inform|alert)\s+the\s+user",
    r"|<\|im_start\|>",
    r")"
);

/// Every built-in, in a fixed order (a detector's id is its position).
pub(crate) const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "private_key",
        group: Group::Secrets,
        how: How::Anchored {
            // Searched as `BEGIN` (dashes fit the literal search's
            // fingerprints of many other anchors: Markdown tables, rules).
            anchors: &["?????BEGIN"],
            case: Case::Exact,
            back: false,
            // The whole block when its END line is there, else the header and
            // what follows of the key.
            regex: r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY-----(?:[A-Za-z0-9+/=\s:,.-]*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY-----|[A-Za-z0-9+/=\s:,.-]*)",
            bounded: false,
        },
    },
    Builtin {
        name: "aws_key",
        group: Group::Secrets,
        how: How::Anchored {
            anchors: &["AKIA", "ASIA"],
            case: Case::Exact,
            back: false,
            regex: r"(?:AKIA|ASIA)[A-Z0-9]{16}(?-u:\b)",
            bounded: true,
        },
    },
    Builtin {
        name: "github_token",
        group: Group::Secrets,
        how: How::Anchored {
            anchors: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
            case: Case::Exact,
            back: false,
            regex: r"(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,255})(?-u:\b)",
            bounded: true,
        },
    },
    Builtin {
        name: "slack_token",
        group: Group::Secrets,
        how: How::Anchored {
            anchors: &["xoxb-", "xoxa-", "xoxp-", "xoxr-", "xoxs-"],
            case: Case::Exact,
            back: false,
            regex: r"xox[baprs]-[0-9A-Za-z][0-9A-Za-z-]{8,250}",
            bounded: true,
        },
    },
    Builtin {
        name: "stripe_key",
        group: Group::Secrets,
        how: How::Anchored {
            anchors: &["?k_live_"],
            case: Case::Exact,
            back: false,
            regex: r"[rs]k_live_[0-9A-Za-z]{16,247}(?-u:\b)",
            bounded: true,
        },
    },
    Builtin {
        name: "jwt",
        group: Group::Secrets,
        how: How::Anchored {
            // The payload's start: four bytes, where a header's `eyJ` alone
            // would weaken the literal search for every anchor.
            anchors: &[".eyJ"],
            case: Case::Exact,
            back: true,
            regex: r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
            bounded: true,
        },
    },
    Builtin {
        name: "bearer",
        group: Group::Secrets,
        how: How::Anchored {
            anchors: &["bearer"],
            case: Case::Capital,
            back: false,
            regex: r"(?i:bearer)[ \t\r\n]+[A-Za-z0-9._~+/-]{20,}=*",
            bounded: true,
        },
    },
    Builtin {
        name: "email",
        group: Group::Pii,
        how: How::Byte {
            byte: b'@',
            regex: r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}(?-u:\b)",
            anchored: false,
        },
    },
    Builtin {
        name: "card_number",
        group: Group::Pii,
        how: How::Card,
    },
    Builtin {
        name: "iban",
        group: Group::Pii,
        how: How::Iban,
    },
    Builtin {
        name: "unicode_tags",
        group: Group::Injection,
        how: How::Chars(CharClass::Tags),
    },
    Builtin {
        name: "bidi_control",
        group: Group::Injection,
        how: How::Chars(CharClass::Bidi),
    },
    Builtin {
        name: "zero_width",
        group: Group::Injection,
        how: How::Chars(CharClass::ZeroWidth),
    },
    Builtin {
        name: "ansi_escape",
        group: Group::Injection,
        how: How::Byte {
            byte: 0x1b,
            // CSI (ESC [ ... final byte) and OSC (ESC ] ... BEL or ESC \).
            regex: r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]{0,512}(?:\x07|\x1b\\))",
            anchored: true,
        },
    },
    Builtin {
        name: "override_phrase",
        group: Group::Injection,
        how: How::Anchored {
            anchors: &[
                "ignore",
                "disregard",
                "forget",
                "you are now",
                "system prompt",
                "new instructions",
                "do not",
                "<|im_start|>",
            ],
            case: Case::Any,
            back: false,
            regex: OVERRIDE_PHRASES,
            bounded: true,
        },
    },
];

/// The built-in named `name`.
pub(crate) fn builtin(name: &str) -> Option<usize> {
    BUILTINS.iter().position(|b| b.name == name)
}

/// Which letter cases of an anchor are searched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Case {
    /// As written.
    Exact,
    /// Lowercase and Capitalised.
    Capital,
    /// Lowercase, Capitalised and in capitals.
    Any,
}

/// The literals an anchor is searched as, each with how many bytes before
/// it the match is tried (its lead). A letter-led anchor in `Capital` or
/// `Any` case is searched without its first letter (lead 1), which finds
/// the lowercase and the Capitalised form with one literal (the anchored
/// regex, case-insensitive, checks the letter); `Any` adds the rest in
/// capitals. Fewer literals keep the search on slim Teddy (at most 32).
pub(crate) fn anchor_forms(anchor: &str, case: Case) -> Vec<(String, usize)> {
    let rest = anchor.trim_start_matches('?');
    if rest.len() < anchor.len() {
        return vec![(rest.to_string(), anchor.len() - rest.len())];
    }
    let letter_led = anchor
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphabetic);
    if case == Case::Exact || !letter_led {
        return vec![(anchor.to_string(), 0)];
    }
    let rest = &anchor[1..];
    let mut forms = vec![(rest.to_string(), 1)];
    if case == Case::Any && rest.to_ascii_uppercase() != rest {
        forms.push((rest.to_ascii_uppercase(), 1));
    }
    forms
}
