//! `swr-gate keygen`: new client credentials. Only a hash or a secret's reference goes
//! into the config; the secret itself is shown once, to be handed to the client.

use crate::crypto::{hex, random_bytes, sha256};

/// A new API key and the `[[clients]]` lines that accept it.
pub fn api_key(client: &str) -> String {
    let key = format!("swrg_{}", hex(&random_bytes::<24>()));
    let hash = hex(&sha256(key.as_bytes()));
    format!(
        "# API key for {client}: give it to the client, keep it nowhere else.\n\
         # {key}\n\
         [[clients]]\n\
         id = \"{client}\"\n\
         groups = []\n\
         api_key_sha256 = \"{hash}\"\n"
    )
}
