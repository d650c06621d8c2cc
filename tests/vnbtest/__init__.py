"""What the tests share (vnetbe's test support package), by concern: rings (both ends of a split virtqueue over GuestMemory, and a
reference translation), device (a whole device over a socketpair "tap"), fakelink (that socketpair),
net (a guest on a real macvtap with the peer across a veth), wait (polling for a condition)."""
