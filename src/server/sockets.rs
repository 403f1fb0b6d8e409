//! [`Sockets`] and [`Server::from_sockets`]: a server built from every kind
//! of socket it serves, none bound by itself: the new instance's side of a
//! take-over (docs/protocol.md "Operations", take-over), or any embedder
//! that holds the sockets already.

use std::time::Instant;

use super::Server;
use crate::accept::Acceptor;
use crate::config::Config;
use crate::error::Error;
use crate::health::Health;
use crate::udp::UdpSockets;

/// Sockets a server serves instead of binding addresses of its own
/// ([`Server::from_sockets`]): what [`crate::take_over`] received from the
/// running instance, or sockets an embedder made itself. Any socket may be
/// blocking or not; the server makes them non-blocking.
#[derive(Debug, Default)]
pub struct Sockets {
    /// Listening TCP sockets of the echo service (`--listen`); at least one.
    pub tcp: Vec<std::net::TcpListener>,
    /// Bound UDP sockets echoed on (`--udp`); may be empty.
    pub udp: Vec<std::net::UdpSocket>,
    /// A listening TCP socket for the health listener (`--health`), if any.
    pub health: Option<std::net::TcpListener>,
}

impl Server {
    /// Like [`Server::bind`], but serves `sockets` and binds nothing:
    /// `config.listen`, `config.udp` and `config.health` are replaced by the
    /// sockets' own addresses (with no health socket, `config.health`
    /// becomes `None`: no health listener is bound either). The sockets
    /// are the server's from here on: it closes the TCP listeners and the
    /// UDP sockets when the drain begins and the health listener at exit,
    /// as if it had bound them. This is how a take-over's new instance
    /// serves every socket it received (docs/protocol.md "Operations").
    ///
    /// # Errors
    ///
    /// [`Error::Inherit`] when there is no TCP listener or a socket has no
    /// address or cannot be made non-blocking, [`Error::Config`] for an
    /// invalid config (the sockets' addresses included: more than 256 UDP
    /// sockets, say), [`Error::Setup`] when the `Poll` or waker cannot be
    /// created.
    pub fn from_sockets(mut config: Config, sockets: Sockets) -> Result<Server, Error> {
        let Sockets { tcp, udp, health } = sockets;
        let acceptor = Acceptor::adopt(tcp, &config)?;
        let udp = UdpSockets::adopt(udp, &config, Instant::now())?;
        let health = health.map(adopt_health).transpose()?;
        config.listen = acceptor.addrs();
        config.udp = udp.addrs().to_vec();
        config.health = health.as_ref().map(Health::local_addr);
        config.validate()?;
        Server::new(config, acceptor, health, udp)
    }
}

/// Serves a listening socket the caller already has as the health listener.
fn adopt_health(listener: std::net::TcpListener) -> Result<Health, Error> {
    let inherit = |what: &str, err: std::io::Error| Error::Inherit {
        detail: format!("{what}: {}", crate::error::os_reason(&err)),
    };
    // mio needs non-blocking sockets; one from an embedder may not be.
    listener
        .set_nonblocking(true)
        .map_err(|err| inherit("cannot make the health listener non-blocking", err))?;
    Health::from_listener(mio::net::TcpListener::from_std(listener))
        .map_err(|err| inherit("cannot read the health listener's address", err))
}
