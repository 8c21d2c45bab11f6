//! Protocol versions: the release table (for names in messages and logs) and the eras of
//! packet layouts and ids that changed between 1.7 and today. Every packet asks the era of the
//! client's protocol what to read or write.

use std::fmt;

/// A protocol version number as a client announces it in its handshake.
///
/// Numbers wakegate does not know are treated as newer than every release it knows, with the
/// packet layouts of the latest one; so are snapshots (numbers from `0x4000_0000`), which in
/// practice are recent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Protocol(pub i32);

/// Release protocol numbers and the versions that speak them (minecraft-data's
/// `protocolVersions.json`), for messages and logs.
pub(super) const RELEASES: &[(i32, &str)] = &[
    (4, "1.7.2–1.7.5"),
    (5, "1.7.6–1.7.10"),
    (47, "1.8–1.8.9"),
    (107, "1.9"),
    (108, "1.9.1"),
    (109, "1.9.2"),
    (110, "1.9.3–1.9.4"),
    (210, "1.10–1.10.2"),
    (315, "1.11"),
    (316, "1.11.1–1.11.2"),
    (335, "1.12"),
    (338, "1.12.1"),
    (340, "1.12.2"),
    (393, "1.13"),
    (401, "1.13.1"),
    (404, "1.13.2"),
    (477, "1.14"),
    (480, "1.14.1"),
    (485, "1.14.2"),
    (490, "1.14.3"),
    (498, "1.14.4"),
    (573, "1.15"),
    (575, "1.15.1"),
    (578, "1.15.2"),
    (735, "1.16"),
    (736, "1.16.1"),
    (751, "1.16.2"),
    (753, "1.16.3"),
    (754, "1.16.4–1.16.5"),
    (755, "1.17"),
    (756, "1.17.1"),
    (757, "1.18–1.18.1"),
    (758, "1.18.2"),
    (759, "1.19"),
    (760, "1.19.1–1.19.2"),
    (761, "1.19.3"),
    (762, "1.19.4"),
    (763, "1.20–1.20.1"),
    (764, "1.20.2"),
    (765, "1.20.3–1.20.4"),
    (766, "1.20.5–1.20.6"),
    (767, "1.21–1.21.1"),
    (768, "1.21.2–1.21.3"),
    (769, "1.21.4"),
    (770, "1.21.5"),
    (771, "1.21.6"),
    (772, "1.21.7–1.21.8"),
    (773, "1.21.9–1.21.10"),
    (774, "1.21.11"),
    (775, "26.1–26.1.2"),
    (776, "26.2"),
    (777, "26.3"),
];

impl Protocol {
    /// 1.20.2: the first with a configuration phase between login and play.
    pub const CONFIGURATION: Protocol = Protocol(764);
    /// 1.20.5: the first with the Transfer packet and the "transfer" handshake intent.
    pub const TRANSFER: Protocol = Protocol(766);
    /// The newest release this table knows.
    pub const LATEST_KNOWN: Protocol = Protocol(RELEASES[RELEASES.len() - 1].0);

    /// The release versions that speak this protocol, e.g. `1.20.3–1.20.4`.
    pub fn version_name(self) -> Option<&'static str> {
        RELEASES
            .binary_search_by_key(&self.0, |&(number, _)| number)
            .ok()
            .map(|i| RELEASES[i].1)
    }

    /// Snapshot and pre-release numbers have bit 30 set.
    pub fn is_snapshot(self) -> bool {
        self.0 >= 0x4000_0000
    }

    /// Whether the client can be sent elsewhere with a Transfer packet (1.20.5 and later).
    pub fn supports_transfer(self) -> bool {
        self >= Self::TRANSFER
    }

    /// Whether login leads to a configuration phase (1.20.2 and later) instead of play.
    pub fn has_configuration(self) -> bool {
        self >= Self::CONFIGURATION
    }

    /// The packet layouts and ids of this protocol.
    pub(super) fn era(self) -> &'static Era {
        ERAS.iter()
            .rev()
            .find(|era| self.0 >= era.since)
            .unwrap_or(&ERAS[0])
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version_name() {
            Some(name) => write!(f, "Minecraft {name} (protocol {})", self.0),
            None if self.is_snapshot() => write!(f, "a snapshot (protocol {:#x})", self.0),
            None => write!(f, "protocol {} (an unknown version)", self.0),
        }
    }
}

/// How the packets wakegate reads or writes after the handshake look in a range of versions.
/// Status, login disconnect and login success kept their ids from 1.7 to 26.x; the rest moved.
#[derive(Debug)]
pub(super) struct Era {
    /// The first protocol number of the range.
    pub(super) since: i32,
    pub(super) login_start: LoginStartLayout,
    pub(super) success_uuid: UuidForm,
    /// Login success carries the profile's properties (1.19 and later).
    pub(super) success_properties: bool,
    /// Login success ends with a "strict error handling" bool (1.20.5 to 1.21.1 only).
    pub(super) success_strict_errors: bool,
    /// Serverbound login acknowledged (1.20.2 and later).
    pub(super) login_acknowledged: Option<i32>,
    pub(super) configuration: Option<ConfigurationIds>,
}

#[derive(Debug)]
pub(super) struct ConfigurationIds {
    /// Clientbound.
    pub(super) disconnect: i32,
    /// Clientbound; the client answers with `keep_alive_response`.
    pub(super) keep_alive: i32,
    /// Serverbound.
    pub(super) keep_alive_response: i32,
    /// Serverbound, after the server's finish configuration.
    pub(super) finish_acknowledged: i32,
    /// Clientbound (1.20.5 and later).
    pub(super) transfer: Option<i32>,
    /// How the disconnect reason is written: JSON text until 1.20.2, NBT from 1.20.3.
    pub(super) text_as_nbt: bool,
}

/// The layouts of login start over the versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginStartLayout {
    /// Until 1.18.2 (758): the name only.
    Name,
    /// 1.19 (759): the name, then optional signature data (expiry, public key, signature).
    NameSignature,
    /// 1.19.1–1.19.2 (760): as 1.19, then an optional UUID.
    NameSignatureUuid,
    /// 1.19.3–1.20.1 (761–763): the name, then an optional UUID.
    NameOptionalUuid,
    /// 1.20.2 (764) and later: the name, then the UUID.
    NameUuid,
}

/// How login success writes the player's UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UuidForm {
    /// 1.7.2–1.7.5: 32 hexadecimal digits.
    Simple,
    /// 1.7.6–1.15.2: the hyphenated form.
    Hyphenated,
    /// 1.16 and later: 16 bytes.
    Binary,
}

const ERAS: &[Era] = &[
    ERAS_BASE,
    Era {
        since: 5,
        success_uuid: UuidForm::Hyphenated,
        ..ERAS_BASE
    },
    Era {
        since: 735,
        ..ERAS_BINARY_UUID
    },
    Era {
        since: 759,
        login_start: LoginStartLayout::NameSignature,
        success_properties: true,
        ..ERAS_BINARY_UUID
    },
    Era {
        since: 760,
        login_start: LoginStartLayout::NameSignatureUuid,
        success_properties: true,
        ..ERAS_BINARY_UUID
    },
    Era {
        since: 761,
        login_start: LoginStartLayout::NameOptionalUuid,
        success_properties: true,
        ..ERAS_BINARY_UUID
    },
    Era {
        since: 764,
        login_start: LoginStartLayout::NameUuid,
        success_properties: true,
        login_acknowledged: Some(0x03),
        configuration: Some(ConfigurationIds {
            disconnect: 0x01,
            keep_alive: 0x03,
            keep_alive_response: 0x03,
            finish_acknowledged: 0x02,
            transfer: None,
            text_as_nbt: false,
        }),
        ..ERAS_BINARY_UUID
    },
    Era {
        since: 765,
        login_start: LoginStartLayout::NameUuid,
        success_properties: true,
        login_acknowledged: Some(0x03),
        configuration: Some(ConfigurationIds {
            disconnect: 0x01,
            keep_alive: 0x03,
            keep_alive_response: 0x03,
            finish_acknowledged: 0x02,
            transfer: None,
            text_as_nbt: true,
        }),
        ..ERAS_BINARY_UUID
    },
    Era {
        since: 766,
        login_start: LoginStartLayout::NameUuid,
        success_properties: true,
        success_strict_errors: true,
        login_acknowledged: Some(0x03),
        configuration: Some(CONFIGURATION_1_20_5),
        ..ERAS_BINARY_UUID
    },
    Era {
        since: 768,
        login_start: LoginStartLayout::NameUuid,
        success_properties: true,
        success_strict_errors: false,
        login_acknowledged: Some(0x03),
        configuration: Some(CONFIGURATION_1_20_5),
        ..ERAS_BINARY_UUID
    },
];

const ERAS_BASE: Era = Era {
    since: i32::MIN,
    login_start: LoginStartLayout::Name,
    success_uuid: UuidForm::Simple,
    success_properties: false,
    success_strict_errors: false,
    login_acknowledged: None,
    configuration: None,
};

const ERAS_BINARY_UUID: Era = Era {
    success_uuid: UuidForm::Binary,
    ..ERAS_BASE
};

const CONFIGURATION_1_20_5: ConfigurationIds = ConfigurationIds {
    disconnect: 0x02,
    keep_alive: 0x04,
    keep_alive_response: 0x04,
    finish_acknowledged: 0x03,
    transfer: Some(0x0b),
    text_as_nbt: true,
};

// Packet ids that are the same in every version wakegate speaks.
pub(super) const HANDSHAKE: i32 = 0x00;
pub(super) const STATUS_REQUEST: i32 = 0x00;
pub(super) const STATUS_RESPONSE: i32 = 0x00;
pub(super) const PING: i32 = 0x01;
pub(super) const PONG: i32 = 0x01;
pub(super) const LOGIN_START: i32 = 0x00;
pub(super) const LOGIN_DISCONNECT: i32 = 0x00;
pub(super) const LOGIN_SUCCESS: i32 = 0x02;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_and_transfer_support() {
        assert_eq!(Protocol(765).version_name(), Some("1.20.3–1.20.4"));
        assert_eq!(Protocol(769).to_string(), "Minecraft 1.21.4 (protocol 769)");
        assert_eq!(
            Protocol(100).to_string(),
            "protocol 100 (an unknown version)"
        );
        assert_eq!(
            Protocol(0x4000_0105).to_string(),
            "a snapshot (protocol 0x40000105)"
        );
        assert!(!Protocol(765).supports_transfer());
        assert!(Protocol(766).supports_transfer());
        assert!(Protocol(9999).supports_transfer());
        assert!(!Protocol(-1).supports_transfer());
        assert_eq!(Protocol::LATEST_KNOWN, Protocol(777));
        assert!(
            RELEASES.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted for binary search"
        );
        assert!(ERAS.windows(2).all(|w| w[0].since < w[1].since));
    }
}
