//! What a verified client certificate says about its holder, in forms that compare
//! exactly with `tls_subject` and `tls_san`: two different names never compare equal.

use std::fmt::Write;
use std::net::IpAddr;

use x509_parser::der_parser::oid::Oid;
use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid2abbrev, oid_registry};
use x509_parser::x509::X509Name;

/// What the TLS handshake proved about the peer: its verified certificate's names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject as a canonical string (`O=Acme, CN=ops-admin`); `None` when an attribute is not a
    /// string (the certificate can still match by `tls_san`).
    pub subject: Option<String>,
    pub sans: Vec<San>,
}

/// A subject alternative name, by kind: a SPIFFE ID configured as `tls_san` matches a
/// URI name only, never an e-mail or DNS name spelled the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum San {
    /// Lower case: DNS names compare without case.
    Dns(String),
    Uri(String),
    Email(String),
    Ip(IpAddr),
}

impl San {
    /// The kind of name a `tls_san` value is, by its shape: an IP address; a URI (it has a
    /// scheme, `spiffe://…`); an e-mail address (it has an `@`); else a DNS name.
    pub fn configured(text: &str) -> San {
        if let Ok(ip) = text.parse() {
            San::Ip(ip)
        } else if text.contains(':') {
            San::Uri(text.to_owned())
        } else if text.contains('@') {
            San::Email(text.to_owned())
        } else {
            San::Dns(text.to_ascii_lowercase())
        }
    }
}

impl PeerCertificate {
    pub fn from_der(der: &[u8]) -> Option<PeerCertificate> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut sans = Vec::new();
        if let Ok(Some(extension)) = cert.subject_alternative_name() {
            for name in &extension.value.general_names {
                sans.extend(match name {
                    GeneralName::DNSName(v) => Some(San::Dns(v.to_ascii_lowercase())),
                    GeneralName::URI(v) => Some(San::Uri((*v).to_owned())),
                    GeneralName::RFC822Name(v) => Some(San::Email((*v).to_owned())),
                    GeneralName::IPAddress(bytes) => match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    }
                    .map(San::Ip),
                    _ => None,
                });
            }
        }
        Some(PeerCertificate {
            subject: certificate_subject(cert.subject()),
            sans,
        })
    }
}

/// The canonical form of a subject: attributes in certificate order, RDNs joined by `,`,
/// the attributes of a multi-valued RDN by `+`, types in upper case, values escaped as
/// RFC 4514 says (`O=Acme\,CN=boss` is one attribute, never two).
fn certificate_subject(name: &X509Name) -> Option<String> {
    let mut subject = String::new();
    for (i, rdn) in name.iter().enumerate() {
        for (j, attribute) in rdn.iter().enumerate() {
            let kind = kind_of(attribute.attr_type());
            let separator = match (i, j) {
                (0, 0) => "",
                (_, 0) => ",",
                _ => "+",
            };
            subject.push_str(separator);
            push_attribute(&mut subject, &kind, attribute.as_str().ok()?);
        }
    }
    Some(subject)
}

/// Parse a configured `tls_subject` (`O=Acme, CN=ops-admin`; RFC 4514 escapes allowed)
/// into the canonical form [`PeerCertificate::subject`] has. Spaces around `,`, `+` and
/// `=` are the writer's layout; an escaped one (`\ `) is part of the value.
pub fn configured_subject(text: &str) -> Result<String, String> {
    let mut subject = String::new();
    let mut rest = text;
    loop {
        let (attribute, separator, tail) = split_unescaped(rest, &[',', '+'])?;
        let (kind, value) = attribute
            .split_once('=')
            .ok_or_else(|| format!("tls_subject {text:?}: {attribute:?} is not TYPE=value"))?;
        let kind = kind.trim_matches(' ');
        if kind.is_empty()
            || !kind
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            return Err(format!(
                "tls_subject {text:?}: {kind:?} is not an attribute type"
            ));
        }
        let value = unescape(value.trim_start_matches(' '), text)?;
        push_attribute(&mut subject, &certificate_kind(kind), &value);
        match separator {
            Some(separator) => {
                subject.push(separator);
                rest = tail;
            }
            None => return Ok(subject),
        }
    }
}

/// RFC 4514's attribute type names (§3), and e-mail, with their long names (RFC 4519)
/// and OIDs: written any of the three ways in `tls_subject`, each is the same type.
const NAMES: [(&str, &str, &str); 10] = [
    ("CN", "commonName", "2.5.4.3"),
    ("L", "localityName", "2.5.4.7"),
    ("ST", "stateOrProvinceName", "2.5.4.8"),
    ("O", "organizationName", "2.5.4.10"),
    ("OU", "organizationalUnitName", "2.5.4.11"),
    ("C", "countryName", "2.5.4.6"),
    ("STREET", "streetAddress", "2.5.4.9"),
    ("DC", "domainComponent", "0.9.2342.19200300.100.1.25"),
    ("UID", "userId", "0.9.2342.19200300.100.1.1"),
    ("EMAIL", "emailAddress", "1.2.840.113549.1.9.1"),
];

/// The name a certificate's attribute type goes by in its canonical subject: RFC 4514's,
/// else x509-parser's registry's, else the OID.
fn kind_of(oid: &Oid) -> String {
    let dotted = oid.to_id_string();
    if let Some((name, _, _)) = NAMES.iter().find(|(_, _, o)| *o == dotted) {
        return (*name).to_owned();
    }
    match oid2abbrev(oid, oid_registry()) {
        Ok(abbreviation) => abbreviation.to_owned(),
        Err(_) => dotted,
    }
}

/// A configured type as [`kind_of`] names it, for a type written as that name, its long
/// name (`commonName`), its OID (`2.5.4.3`), or the registry's name for it.
fn certificate_kind(kind: &str) -> String {
    // `E`, as some tools print e-mail.
    let kind = match kind.eq_ignore_ascii_case("E") {
        true => "EMAIL",
        false => kind,
    };
    if let Some((name, _, _)) = NAMES
        .iter()
        .find(|(name, long, _)| name.eq_ignore_ascii_case(kind) || long.eq_ignore_ascii_case(kind))
    {
        return (*name).to_owned();
    }
    let oid = match kind.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        true => kind.parse::<Oid>().ok(),
        false => oid_registry()
            .iter()
            .find(|(_, entry)| entry.sn().eq_ignore_ascii_case(kind))
            .map(|(oid, _)| oid.clone()),
    };
    oid.map_or_else(|| kind.to_owned(), |oid| kind_of(&oid))
}

/// `TYPE=value`, with the type in upper case (`emailAddress` as x509's `EMAIL`) and the
/// value escaped.
fn push_attribute(subject: &mut String, kind: &str, value: &str) {
    let kind = kind.to_ascii_uppercase();
    subject.push_str(if kind == "EMAILADDRESS" {
        "EMAIL"
    } else {
        &kind
    });
    subject.push('=');
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let edge_space = c == ' ' && (i == 0 || i == last);
        if matches!(c, '\\' | ',' | '+' | '"' | '<' | '>' | ';')
            || edge_space
            || (c == '#' && i == 0)
        {
            subject.push('\\');
            subject.push(c);
        } else if c.is_control() {
            let mut bytes = [0; 4];
            for byte in c.encode_utf8(&mut bytes).bytes() {
                let _ = write!(subject, "\\{byte:02X}");
            }
        } else {
            subject.push(c);
        }
    }
}

/// The text up to the first of `separators` not escaped by `\`, that separator, and the
/// rest. Unescaped trailing spaces of the part are dropped.
fn split_unescaped<'a>(
    text: &'a str,
    separators: &[char],
) -> Result<(&'a str, Option<char>, &'a str), String> {
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if separators.contains(&c) {
            return Ok((trim_end_unescaped(&text[..at]), Some(c), &text[at + 1..]));
        }
    }
    Ok((trim_end_unescaped(text), None, ""))
}

/// Trailing spaces, but not one a backslash escapes: an odd run of backslashes before
/// it (`a\ ` keeps its space, `a\\ ` is `a\` and a layout space).
fn trim_end_unescaped(part: &str) -> &str {
    let mut end = part.len();
    while part[..end].ends_with(' ') {
        let backslashes = part[..end - 1]
            .bytes()
            .rev()
            .take_while(|b| *b == b'\\')
            .count();
        if backslashes % 2 == 1 {
            break;
        }
        end -= 1;
    }
    &part[..end]
}

/// Undo RFC 4514 escapes: `\,` and the like, and `\HH` byte pairs (UTF-8).
fn unescape(value: &str, whole: &str) -> Result<String, String> {
    let bad =
        || format!("tls_subject {whole:?}: a backslash must escape a character or two hex digits");
    let mut bytes = Vec::with_capacity(value.len());
    let mut rest = value.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        if byte != b'\\' {
            bytes.push(byte);
            continue;
        }
        let hex_pair = rest
            .get(..2)
            .filter(|pair| pair.iter().all(u8::is_ascii_hexdigit))
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (hex_pair, rest.first()) {
            (Some(decoded), _) => {
                bytes.push(decoded);
                rest = &rest[2..];
            }
            (None, Some(next)) if !next.is_ascii_alphanumeric() => {
                bytes.push(*next);
                rest = &rest[1..];
            }
            _ => return Err(bad()),
        }
    }
    String::from_utf8(bytes).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_subjects_take_the_canonical_form() {
        for (configured, canonical) in [
            ("CN=ops-admin", "CN=ops-admin"),
            ("O=Acme,CN=ops-admin", "O=Acme,CN=ops-admin"),
            ("o = Acme , cn = ops-admin", "O=Acme,CN=ops-admin"),
            (r"O=Acme\,CN=boss", r"O=Acme\,CN=boss"),
            (r"O=Acme\2CCN=boss", r"O=Acme\,CN=boss"),
            (r"CN=ops-admin\ ", r"CN=ops-admin\ "),
            ("CN=a+UID=b", "CN=a+UID=b"),
            ("emailAddress=a@b.example", "EMAIL=a@b.example"),
            ("commonName=ops-admin", "CN=ops-admin"),
            ("2.5.4.3=ops-admin", "CN=ops-admin"),
            ("organizationName=Acme+2.5.4.11=Ops", "O=Acme+OU=Ops"),
            (
                "organizationalUnitName=Ops,streetAddress=x",
                "OU=Ops,STREET=x",
            ),
            ("2.5.4.9=x,userId=u,E=a@b", "STREET=x,UID=u,EMAIL=a@b"),
            ("1.2.3.4=x", "1.2.3.4=x"),
            (r"CN=caf\C3\A9", "CN=café"),
            (r"CN=a\\ ,O=x", r"CN=a\\,O=x"),
            (r"O=R\+D", r"O=R\+D"),
        ] {
            assert_eq!(
                configured_subject(configured).as_deref(),
                Ok(canonical),
                "{configured}"
            );
        }
        for bad in [
            "CN",
            "=x",
            r"CN=a\",
            r"CN=a\q",
            "C N=x",
            r"CN=\FF",
            "\u{A0}CN=x",
        ] {
            assert!(configured_subject(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn certificate_subjects_escape_what_would_read_as_structure() {
        let mut subject = String::new();
        push_attribute(&mut subject, "O", "Acme,CN=boss");
        assert_eq!(subject, r"O=Acme\,CN=boss");
        let mut spaced = String::new();
        push_attribute(&mut spaced, "CN", " ops-admin ");
        assert_eq!(spaced, r"CN=\ ops-admin\ ");
        assert_ne!(configured_subject("CN=ops-admin").unwrap(), spaced);
    }

    #[test]
    fn a_configured_san_names_one_kind_of_name() {
        assert_eq!(
            San::configured("spiffe://acme/ci"),
            San::Uri("spiffe://acme/ci".into())
        );
        assert_eq!(
            San::configured("ci@acme.example"),
            San::Email("ci@acme.example".into())
        );
        assert_eq!(
            San::configured("CI.Acme.example"),
            San::Dns("ci.acme.example".into())
        );
        assert_eq!(San::configured("::1"), San::Ip("::1".parse().unwrap()));
        assert_ne!(
            San::configured("spiffe://acme/ci"),
            San::Email("spiffe://acme/ci".into())
        );
    }
}
