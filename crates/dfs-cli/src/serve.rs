//! `dfs serve` (placeholder until dfs-server lands).

use crate::cli::ServeArgs;
use crate::{Error, Result};

pub(crate) async fn serve(_args: ServeArgs) -> Result<()> {
    Err(Error::Usage {
        message: "dfs serve is not available in this build yet".to_owned(),
    })
}
