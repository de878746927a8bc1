"""A node's local clock: simulated time seen through an offset (skew) and a rate (drift)."""

__all__ = ["NodeClock"]


class NodeClock:
    """local = base_local + rate * (sim_now - base_sim).

    A skew is a jump of the local clock (forwards or backwards); a drift changes its rate.
    Timers are set in local milliseconds, so a fast clock (rate > 1) fires them early in
    simulated time. A timer already armed keeps its simulated deadline when the rate
    changes later (as a kernel timer armed on a hardware clock would).
    """

    __slots__ = ("base_sim_ms", "base_local_ms", "rate")

    def __init__(self) -> None:
        self.base_sim_ms = 0.0
        self.base_local_ms = 0.0
        self.rate = 1.0

    def local_ms(self, sim_ms: float) -> float:
        return self.base_local_ms + self.rate * (sim_ms - self.base_sim_ms)

    def sim_delay_ms(self, local_delay_ms: float) -> float:
        return max(0.0, local_delay_ms) / self.rate

    def skew(self, sim_ms: float, delta_ms: float) -> None:
        self.base_local_ms = self.local_ms(sim_ms) + delta_ms
        self.base_sim_ms = sim_ms

    def set_rate(self, sim_ms: float, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"clock rate must be positive, got {rate}")
        self.base_local_ms = self.local_ms(sim_ms)
        self.base_sim_ms = sim_ms
        self.rate = rate
