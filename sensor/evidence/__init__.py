"""The evidence behind alerts, on the sensor: the packet ring it writes while capturing, the packets it keeps for
each alert beyond the ring's rotation, the capture files it replayed, and the pcap jobs it serves from them."""
