//! `mdsub keygen`: write a CURVE key pair for a server or a client.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::security::Keypair;

/// `mdsub keygen` arguments.
#[derive(Debug, Args)]
#[command(after_help = "Writes DIR/NAME.key (public and secret key, mode 0600: keep it on the host that \
uses it) and DIR/NAME.pub (public key only: give it to peers). Keys are the 40-character Z85 text \
libzmq's zmq_curve_keypair produces, in CZMQ's certificate layout. See docs/SECURITY.md.")]
pub struct KeygenArgs {
    /// Name of the pair: the files are NAME.key and NAME.pub.
    pub name: String,
    /// Directory to write them in (made if missing).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Replace existing files of that name.
    #[arg(long)]
    pub force: bool,
}

/// Generate and write the pair; prints the two paths and the public key.
pub fn keygen(a: &KeygenArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("cannot make {}", a.dir.display()))?;
    let secret_path = a.dir.join(format!("{}.key", a.name));
    if secret_path.exists() && !a.force {
        anyhow::bail!("{} exists: refusing to overwrite a secret key (--force replaces it)", secret_path.display());
    }
    let pair = Keypair::generate()?;
    let (secret, public) = pair.write(&a.dir, &a.name)?;
    println!("secret {}", secret.display());
    println!("public {}", public.display());
    println!("public-key {}", pair.public);
    Ok(())
}
