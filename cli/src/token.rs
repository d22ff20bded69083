//! `dynamoctl token`: bearer tokens for a cluster. `create` makes a new random token and
//! prints it with the line to append to the nodes' tokens file (which keeps only its hash);
//! `hash` prints the stored form of a token read from standard input.

use std::io::Read as _;

use dynamo_api::security::{generate_token, hash_token, Role, TokenEntry, Tokens};

/// The roles a token can have (peer is for node certificates only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenRole {
    /// get and ring.
    Read,
    /// get, ring, put and delete.
    Readwrite,
    /// Everything, including status, decommission, repair.
    Admin,
}

impl From<TokenRole> for Role {
    fn from(r: TokenRole) -> Role {
        match r {
            TokenRole::Read => Role::Read,
            TokenRole::Readwrite => Role::ReadWrite,
            TokenRole::Admin => Role::Admin,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Print a new random token and the line to append to the nodes' tokens file.
    Create {
        #[arg(long, value_enum)]
        role: TokenRole,
        /// Who holds it (shown in the nodes' logs), e.g. the application's name.
        #[arg(long)]
        name: String,
    },
    /// Read a token from standard input and print its hash (`sha256:...`), the form the
    /// tokens file stores.
    Hash,
}

/// What `token create` prints: the token, then the tokens-file line (comments start with #).
pub fn create(role: Role, name: &str) -> Result<String, String> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err(format!(
            "--name '{name}' must be one word without '#' (it is a field of the tokens file)"
        ));
    }
    let token = generate_token();
    let line = Tokens::new(vec![TokenEntry::for_token(role, name, &token)]).render();
    let line = line.lines().last().unwrap_or_default();
    Ok(format!(
        "# the token: give it to the client (dynamoctl --token or DYNAMO_TOKEN); it is stored \
         nowhere else\n{token}\n# append this line to every node's tokens file (tokens_file); \
         it holds only the token's hash\n{line}\n"
    ))
}

/// Runs `dynamoctl token ...`.
pub fn run(command: TokenCommand) -> Result<(), String> {
    match command {
        TokenCommand::Create { role, name } => print!("{}", create(role.into(), &name)?),
        TokenCommand::Hash => {
            let mut token = String::new();
            std::io::stdin()
                .read_to_string(&mut token)
                .map_err(|e| format!("cannot read the token from standard input: {e}"))?;
            if token.trim().is_empty() {
                return Err(
                    "no token on standard input: `echo \"$TOKEN\" | dynamoctl token hash`".into()
                );
            }
            println!("{}", hash_token(&token));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_token_verifies_against_its_line() {
        let out = create(Role::ReadWrite, "shop").unwrap();
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        let [token, line] = lines[..] else { panic!("{out}") };
        assert_eq!(token.len(), 64);
        let tokens = Tokens::parse(line, "printed line").unwrap();
        let entry = tokens.verify(token).unwrap();
        assert_eq!((entry.role, entry.name.as_str()), (Role::ReadWrite, "shop"));
        // The whole output, comments included, is a valid tokens file too.
        assert_eq!(Tokens::parse(&out.replace(token, ""), "out").unwrap().entries().len(), 1);
        assert!(line.ends_with(&hash_token(token)));
        assert!(create(Role::Read, "two words").unwrap_err().contains("one word"));
    }
}
