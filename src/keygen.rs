//! `swr-gate keygen`: new client credentials. Only a hash or a secret's reference goes
//! into the config; the secret itself is shown once, to be handed to the client.

use crate::crypto::{hex, random_bytes, sha256};

/// A new credential: what the client is given, and the lines for the config. They are
/// printed apart (the secret on stderr), so that `keygen ... >> gate.toml` puts no
/// secret in the file.
pub struct Issued {
    pub secret: String,
    pub config: String,
}

/// A client id that goes into the printed TOML as it is: nothing that could end the
/// string or the line and write other settings (`a"\ngroups = ["admins"]`).
pub fn client_id(text: &str) -> Result<String, String> {
    let fits = (1..=64).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    match fits {
        true => Ok(text.to_owned()),
        false => Err("1 to 64 letters, digits, '.', '_', '-' or '@'".into()),
    }
}

/// A new API key and the `[[clients]]` lines that accept it.
pub fn api_key(client: &str) -> Issued {
    let key = format!("swrg_{}", hex(&random_bytes::<24>()));
    let hash = hex(&sha256(key.as_bytes()));
    Issued {
        secret: format!(
            "# API key for {client}: give it to the client, keep it nowhere else.\n\
             # {key}\n"
        ),
        config: format!(
            "[[clients]]\n\
             id = \"{client}\"\n\
             groups = []\n\
             api_key_sha256 = \"{hash}\"\n"
        ),
    }
}

/// A new AK/SK pair, in the shape Huawei Cloud issues them, and the `[[clients]]` lines.
pub fn aksk(client: &str) -> Issued {
    let access_key = random_text::<20>(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789");
    let secret_key =
        random_text::<40>(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789");
    // Upper-casing and `_` for `.`, `-` and `@` give `a.b`, `a-b` and `A-B` one name: the
    // AK's start keeps the variables of different clients apart.
    let variable = format!(
        "SWR_GATE_SK_{}_{}",
        client
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            })
            .collect::<String>(),
        &access_key[..8]
    );
    Issued {
        secret: format!(
            "# AK/SK for {client}: give both to the client (SDK: BasicCredentials(ak, sk, project_id)).\n\
             # AK: {access_key}\n\
             # SK: {secret_key}\n\
             # The gateway reads the SK from the environment (or use secret_key_file):\n\
             #   export {variable}='{secret_key}'\n"
        ),
        config: format!(
            "[[clients]]\n\
             id = \"{client}\"\n\
             groups = []\n\
             access_key = \"{access_key}\"\n\
             secret_key_env = \"{variable}\"\n"
        ),
    }
}

/// `N` characters drawn uniformly from `alphabet` (rejection sampling, no modulo bias).
fn random_text<const N: usize>(alphabet: &[u8]) -> String {
    let limit = 256 - 256 % alphabet.len();
    let mut out = String::with_capacity(N);
    while out.len() < N {
        for byte in random_bytes::<64>() {
            if (byte as usize) < limit && out.len() < N {
                out.push(alphabet[byte as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_cannot_write_other_settings() {
        assert_eq!(
            client_id("ci-bot@team-a.v2_x").as_deref(),
            Ok("ci-bot@team-a.v2_x")
        );
        for bad in [
            "",
            "a\"\ngroups = [\"admins\"]\n#",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(client_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_printed_config_is_valid_toml_with_the_hash_of_the_printed_key() {
        let issued = api_key("ci-bot");
        let key = issued
            .secret
            .lines()
            .nth(1)
            .unwrap()
            .trim_start_matches("# ");
        assert!(!issued.config.contains(key));
        let parsed: toml::Value = toml::from_str(&issued.config).unwrap();
        let client = &parsed["clients"][0];
        assert_eq!(
            client["api_key_sha256"].as_str().unwrap(),
            hex(&sha256(key.as_bytes()))
        );

        let issued = aksk("release tool");
        let secret_key = issued
            .secret
            .lines()
            .nth(2)
            .unwrap()
            .trim_start_matches("# SK: ");
        assert_eq!(secret_key.len(), 40);
        assert!(!issued.config.contains(secret_key));
        let parsed: toml::Value = toml::from_str(&issued.config).unwrap();
        let client = &parsed["clients"][0];
        assert_eq!(client["access_key"].as_str().unwrap().len(), 20);
        let access_key = client["access_key"].as_str().unwrap();
        assert_eq!(
            client["secret_key_env"].as_str().unwrap(),
            format!("SWR_GATE_SK_RELEASE_TOOL_{}", &access_key[..8])
        );
    }

    #[test]
    fn clients_whose_ids_differ_only_in_case_or_punctuation_get_their_own_variables() {
        let variable = |id| {
            let parsed: toml::Value = toml::from_str(&aksk(id).config).unwrap();
            parsed["clients"][0]["secret_key_env"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let names: std::collections::HashSet<String> = ["a.b", "a-b", "a_b", "A-B"]
            .into_iter()
            .map(variable)
            .collect();
        assert_eq!(names.len(), 4);
    }
}
