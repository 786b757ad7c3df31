"""edge.http.middleware_state: kept per router and definition, forgotten when unused."""

from edge.http.middleware_state import MiddlewareState


def test_kept_across_rebuilds_per_router_and_definition_and_forgotten_when_unused():
    state = MiddlewareState()
    made = []

    def make(tag):
        def build():
            made.append(tag)
            return object()
        return build

    state.begin()
    a = state.keep("r1", ("limit", 1), make("a"))
    b = state.keep("r2", ("limit", 1), make("b"))
    state.end()
    assert a is not b and made == ["a", "b"]

    state.begin()
    assert state.keep("r1", ("limit", 1), make("again")) is a
    c = state.keep("r1", ("limit", 2), make("c"))  # a changed definition
    state.end()
    assert c is not a and made == ["a", "b", "c"] and len(state) == 2  # r2 and r1's old one forgotten

    state.begin()
    state.end()
    assert len(state) == 0


def test_a_definition_that_cannot_be_a_key_is_made_each_time():
    state = MiddlewareState()
    state.begin()
    first = state.keep("r", ["unhashable"], object)
    assert state.keep("r", ["unhashable"], object) is not first and len(state) == 0
