"""The tooling: what measures and teaches, built on the device library's public door.

vnetbe's own guest driver (guest), the far end of the wire (peer, packet), throwaway topologies
(topology), the bench (scenarios, benchcli, results), the cost model (costs), reports and charts
(report, plot) and the kernel lab (lab). Imports run one way: this package uses ``vnetbe``'s public
API; nothing in the library imports from here.
"""
