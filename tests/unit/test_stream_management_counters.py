"""XEP-0198 §4 counter arithmetic: 32-bit sequence numbers that wrap to zero, and acknowledgements
across the wrap (pure code of modules/stream_management.py)."""

from __future__ import annotations

from xml.etree.ElementTree import Element

from rookery.modules.stream_management import MASK, SMState, inc, newly_acked, parse_h


def test_counter_wraps_to_zero_after_2_32_minus_1():
    assert inc(0) == 1
    assert inc(MASK) == 0
    assert inc(MASK - 1, 3) == 1


def test_newly_acked_counts_across_the_wrap():
    assert newly_acked(5, 2) == 3
    assert newly_acked(2, MASK - 1) == 4  # MASK-1 -> MASK -> 0 -> 1 -> 2
    assert newly_acked(7, 7) == 0
    assert newly_acked(1, 2) == MASK  # an h behind the last ack looks like a huge one: refused


def test_parse_h_accepts_only_unsigned_32_bit_integers():
    assert parse_h("0") == 0
    assert parse_h(str(MASK)) == MASK
    for bad in (None, "", "x", "-1", "1.5", str(MASK + 1), "١"):
        assert parse_h(bad) is None


def test_state_acks_across_the_wrap_and_refuses_too_high():
    st = SMState(base_in=0, request_after=5, max_unacked=100)
    st.out = st.acked = MASK - 1  # 2^32 - 2 stanzas were sent and acknowledged
    for i in range(4):
        st.unacked.append((Element("message", id=str(i)), 0.0))
        st.out = inc(st.out)
    assert st.out == 2
    assert not st.ack(3)  # acknowledges 5, only 4 outstanding
    assert st.ack(0)  # two of them
    assert [e.get("id") for e, _ in st.unacked] == ["2", "3"]
    assert st.ack(2)
    assert not st.unacked and st.acked == 2


def test_inbound_count_wraps():
    class Session:
        stanzas_in = 10 + 2**32 + 3  # the session's own count does not wrap; h does

    st = SMState(base_in=10, request_after=5, max_unacked=100)
    assert st.h_in(Session()) == 3
