"""The process's open-file limit (RLIMIT_NOFILE): every connection is a file descriptor.

``raise_nofile_limit`` lifts the soft limit to the hard one at start (the soft limit is often 1,024
while the hard one allows far more), says so in one log line, and says clearly when the limit cannot
carry the configured ``[limits] max_connections``.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

#: file descriptors kept for listeners, storage, logs, the control socket
FD_RESERVE = 64
#: the soft limit asked for when the hard limit is unlimited (Linux's default fs.nr_open)
UNLIMITED_TARGET = 1048576


def raise_nofile_limit(max_connections: int = 0) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force
    (``resource.RLIM_INFINITY`` when unlimited).  With ``max_connections`` (> 0), log an error when
    the limit is below what that many connections need (``max_connections + FD_RESERVE``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        target = hard if hard != resource.RLIM_INFINITY else max(soft, UNLIMITED_TARGET)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open file limit (RLIMIT_NOFILE) from %d to %d: %s", soft, target, e)
        else:
            log.info("raised the open file limit (RLIMIT_NOFILE) from %d to %d (the hard limit)", soft, target)
            soft = target
    if max_connections > 0 and soft != resource.RLIM_INFINITY and max_connections + FD_RESERVE > soft:
        log.error("[limits] max_connections = %d needs %d open files, but this process may open only %d "
                  "(hard limit %s): connections beyond ~%d will be refused by the system; raise the limit "
                  "(systemd LimitNOFILE=, ulimit -Hn, /etc/security/limits.conf) or lower max_connections",
                  max_connections, max_connections + FD_RESERVE, soft,
                  "unlimited" if hard == resource.RLIM_INFINITY else hard, max(0, soft - FD_RESERVE))
    return soft


def connections_allowed(soft: int) -> int:
    """How many connections a soft limit leaves room for (0: no limit)."""
    if soft == resource.RLIM_INFINITY:
        return 0
    return max(16, soft - FD_RESERVE)
