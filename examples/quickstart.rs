//! The README's library example. Terminal 1: `cargo run --example quickstart -- server`;
//! terminal 2: `printf 'hello\nworld\n' | cargo run --example quickstart`.
use shmpipe::{Listener, Options, connect};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join("shmpipe-quickstart.sock");
    if std::env::args().nth(1).as_deref() == Some("server") {
        let mut conn = Listener::bind(&path, &Options::new())?.accept()?;
        let mut buf = Vec::new();
        while conn.recv(&mut buf).is_ok() {
            println!("{}", String::from_utf8_lossy(&buf)); // until Err(Closed)
        }
    } else {
        let (mut tx, _rx) = connect(&path, &Options::new())?.split();
        for line in std::io::stdin().lines() {
            tx.send(line?.as_bytes())?;
        }
        tx.close(std::time::Duration::from_secs(5))?; // Ok: the server read every line
    }
    Ok(())
}
