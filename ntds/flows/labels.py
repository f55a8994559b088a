"""From NFStream's nDPI label to the data set's ProtocolName and L7Protocol (columns 86-87).

NFStream 6.6.0 reports `application_name` as "MASTER.APP" or "APP" in the names
of its embedded nDPI 5 ("TLS.YouTube", "DNS", "QUIC.Google"); Unicauca 2017 was
labelled by nDPI 2.x, which wrote upper-case names ("YOUTUBE", "SSL") and
numeric ids. The rules, in order:

1. ProtocolName is the application part (after the dot) when there is one,
   else the master, upper-cased, with the renames in `RENAMES_2017` applied
   ("TLS" -> "SSL", "ICMP" -> "IP_ICMP", ...). A modern name that 2017 did not
   know is kept, so the label stays as fine as nDPI can make it.
2. L7Protocol is the 2017 id of ProtocolName from `IDS_2017`; if 2017 had no
   such protocol, the 2017 id of the master ("TLS.Reddit" -> REDDIT with the id of
   SSL, 91), which is what nDPI 2.x would most likely have said; else 0
   (UNKNOWN). This keeps every L7Protocol value in the one id space a model
   trained on the data set understands.

IDS_2017 holds nDPI 2.x's protocol numbering (ndpi_protocol_ids.h of that era,
which later releases kept for these protocols); the spec's examples (HTTP 7,
SSL 91, HTTP_PROXY 131) are among them.
"""

from __future__ import annotations

from functools import lru_cache

RENAMES_2017: dict[str, str] = {
    "TLS": "SSL",
    "ICMP": "IP_ICMP",
    "ICMPV6": "IP_ICMPV6",
    "IGMP": "IP_IGMP",
    "GRE": "IP_GRE",
    "OSPF": "IP_OSPF",
    "SCTP": "IP_SCTP",
    "EGP": "IP_EGP",
    "IPSEC": "IP_IPSEC",
    "VRRP": "IP_VRRP",
    "IP_IN_IP": "IP_IP_IN_IP",
    "SKYPE_TEAMS": "SKYPE",
    "MICROSOFT365": "OFFICE_365",
    "ONEDRIVE": "MS_ONE_DRIVE",
    "SMBV1": "SMB",
    "FTP_CONTROL": "FTP_CONTROL",
    "GOOGLEMAPS": "GOOGLE_MAPS",
    "GOOGLESERVICES": "GOOGLE_SERVICES",
    "GOOGLEDOCS": "GOOGLE_DOCS",
    "GOOGLEDRIVE": "GOOGLE_DRIVE",
    "APPLEICLOUD": "APPLE_ICLOUD",
    "APPLEITUNES": "APPLE_ITUNES",
    "APPLEPUSH": "APPLE_PUSH",
    "WINDOWSUPDATE": "WINDOWS_UPDATE",
    "AMAZONVIDEO": "AMAZON_VIDEO",
    "WHATSAPPFILES": "WHATSAPP_FILES",
    "YOUTUBEUPLOAD": "YOUTUBE_UPLOAD",
    "HTTP_CONNECT": "HTTP_CONNECT",
    "HTTP_PROXY": "HTTP_PROXY",
}

IDS_2017: dict[str, int] = {
    "UNKNOWN": 0, "FTP_CONTROL": 1, "MAIL_POP": 2, "MAIL_SMTP": 3, "MAIL_IMAP": 4, "DNS": 5,
    "IPP": 6, "HTTP": 7, "MDNS": 8, "NTP": 9, "NETBIOS": 10, "NFS": 11, "SSDP": 12, "BGP": 13,
    "SNMP": 14, "XDMCP": 15, "SMB": 16, "SYSLOG": 17, "DHCP": 18, "POSTGRES": 19, "MYSQL": 20,
    "DIRECT_DOWNLOAD_LINK": 22, "MAIL_POPS": 23, "APPLEJUICE": 24, "DIRECTCONNECT": 25,
    "COAP": 27, "VMWARE": 28, "MAIL_SMTPS": 29, "KONTIKI": 32, "OPENFT": 33, "FASTTRACK": 34,
    "GNUTELLA": 35, "EDONKEY": 36, "BITTORRENT": 37, "MSN": 68, "YAHOO": 70, "STEAM": 74,
    "HALFLIFE2": 75, "WORLDOFWARCRAFT": 76, "TELNET": 77, "STUN": 78, "IP_IPSEC": 79,
    "IP_GRE": 80, "IP_ICMP": 81, "IP_IGMP": 82, "IP_EGP": 83, "IP_SCTP": 84, "IP_OSPF": 85,
    "IP_IP_IN_IP": 86, "RTP": 87, "RDP": 88, "VNC": 89, "SSL_NO_CERT": 64, "SSL": 91, "SSH": 92,
    "USENET": 93, "MGCP": 94, "IAX": 95, "TFTP": 96, "AFP": 97, "STEALTHNET": 98, "AIMINI": 99,
    "SIP": 100, "TRUPHONE": 101, "IP_ICMPV6": 102, "DHCPV6": 103, "ARMAGETRON": 104,
    "CROSSFIRE": 105, "DOFUS": 106, "FIESTA": 107, "FLORENSIA": 108, "GUILDWARS": 109,
    "KERBEROS": 111, "LDAP": 112, "MAPLESTORY": 113, "MSSQL_TDS": 114, "PPTP": 115,
    "WARCRAFT3": 116, "WORLD_OF_KUNG_FU": 117, "FACEBOOK": 119, "TWITTER": 120, "DROPBOX": 121,
    "GMAIL": 122, "GOOGLE_MAPS": 123, "YOUTUBE": 124, "SKYPE": 125, "GOOGLE": 126,
    "NETFLOW": 128, "SFLOW": 129, "HTTP_CONNECT": 130, "HTTP_PROXY": 131, "CITRIX": 132,
    "NETFLIX": 133, "LASTFM": 134, "WAZE": 135, "YOUTUBE_UPLOAD": 136, "CHECKMK": 138,
    "APPLE": 140, "WEBEX": 141, "WHATSAPP": 142, "APPLE_ICLOUD": 143, "VIBER": 144,
    "APPLE_ITUNES": 145, "RADIUS": 146, "WINDOWS_UPDATE": 147, "TEAMVIEWER": 148, "TUENTI": 149,
    "LOTUS_NOTES": 150, "SAP": 151, "GTP": 152, "UPNP": 153, "LLMNR": 154, "SPOTIFY": 156,
    "H323": 158, "OPENVPN": 159, "NOE": 160, "CISCOVPN": 161, "TEAMSPEAK": 162, "TOR": 163,
    "SKINNY": 164, "RTCP": 165, "RSYNC": 166, "ORACLE": 167, "CORBA": 168, "UBUNTUONE": 169,
    "WHOIS_DAS": 170, "SOCKS": 172, "NINTENDO": 173, "RTMP": 174, "FTP_DATA": 175,
    "WIKIPEDIA": 176, "ZMQ": 177, "AMAZON": 178, "EBAY": 179, "CNN": 180, "MEGACO": 181,
    "REDIS": 182, "VHUA": 184, "TELEGRAM": 185, "VEVO": 186, "PANDORA": 187, "QUIC": 188,
    "EAQ": 190, "OOKLA": 191, "AMQP": 192, "KAKAOTALK": 193, "KAKAOTALK_VOICE": 194,
    "TWITCH": 195, "WECHAT": 197, "MPEGTS": 198, "SNAPCHAT": 199, "SINA": 200, "HANGOUT": 201,
    "IFLIX": 202, "GITHUB": 203, "BJNP": 204, "SMPP": 207, "DNSCRYPT": 208, "TINC": 209,
    "DEEZER": 210, "INSTAGRAM": 211, "MICROSOFT": 212, "STARCRAFT": 213, "TEREDO": 214,
    "HOTSPOT_SHIELD": 215, "GOOGLE_DRIVE": 217, "OCS": 218, "OFFICE_365": 219,
    "CLOUDFLARE": 220, "MS_ONE_DRIVE": 221, "MQTT": 222, "RX": 223, "APPLESTORE": 224,
    "OPENDNS": 225, "GIT": 226, "DRDA": 227, "PLAYSTORE": 228, "SOMEIP": 229, "FIX": 230,
    "PLAYSTATION": 231, "PASTEBIN": 232, "LINKEDIN": 233, "SOUNDCLOUD": 234, "CSGO": 235,
    "LISP": 236, "DIAMETER": 237, "APPLE_PUSH": 238, "GOOGLE_SERVICES": 239,
    "AMAZON_VIDEO": 240, "GOOGLE_DOCS": 241, "WHATSAPP_FILES": 242,
}  # fmt: skip


def _name_2017(part: str) -> str:
    upper = part.strip().upper()
    return RENAMES_2017.get(upper, upper)


@lru_cache(maxsize=4096)
def dataset_label(application_name: str | None) -> tuple[str, int]:
    """(ProtocolName, L7Protocol) for one NFStream `application_name`."""
    if not application_name:
        return "UNKNOWN", 0
    master, _, app = application_name.partition(".")
    name = _name_2017(app or master)
    if name in IDS_2017:
        return name, IDS_2017[name]
    master_name = _name_2017(master)
    return name, IDS_2017.get(master_name, 0)
