"""ModuleContext registrations at run time: each returns a Handle; removing it undoes exactly that
registration, and the context forgets it (a module that switches hooks on and off for the life of the
server does not pile up handles)."""

from __future__ import annotations

from rookery.config import Config
from rookery.module import Module
from rookery.module_manager import ModuleManager
from rookery.server import Server


class Toggler(Module):
    name = "toggler"


def manager() -> tuple[Server, ModuleManager]:
    cfg = Config(domains=["example.org"], modules=["disco"])
    srv = Server(cfg)
    m = ModuleManager(cfg, router=srv.router, sessions=srv.sessions, routes=srv.routes, events=srv.events,
                      tables=srv.tables, elements=srv.elements, storage=None, tasks=srv.tasks,  # type: ignore[arg-type]
                      started_at=0.0)
    return srv, m


def test_handles_made_and_removed_at_run_time_do_not_pile_up():
    srv, m = manager()
    mod = m.load(Toggler, ["example.org"])
    base = len(mod.ctx.handles)
    for _ in range(100):
        hs = [mod.ctx.filter(lambda s, el: el), mod.ctx.hook("message-delivered", lambda st, t: None),
              mod.ctx.hook("message/bare", lambda st: None), mod.ctx.element("{urn:test}x", lambda s, el: None)]
        assert len(mod.ctx.handles) == base + 4 and srv.events.filters
        for h in hs:
            h.remove()
        assert len(mod.ctx.handles) == base
    assert srv.events.filters == [] and "message-delivered" not in srv.events.chains
    assert "message/bare" not in srv.tables["example.org"].chains and "{urn:test}x" not in srv.elements


def test_stopping_a_module_removes_what_it_registered_at_run_time():
    srv, m = manager()
    mod = m.load(Toggler, ["example.org"])
    mod.ctx.filter(lambda s, el: el)
    mod.ctx.iq("get", "urn:test", "q", lambda st: st.result(), to="host")
    m._unregister(mod)
    assert srv.events.filters == [] and ("get", "urn:test", "q", "host") not in srv.tables["example.org"].iq
    assert "toggler" not in m.modules and mod.ctx.handles == []
