'use strict';
'require view';
'require form';
'require uci';

/*
 * Settings: every option `mxspool check` accepts (README "Configuration
 * reference"), the main section in tabs and one row per domain. The
 * validators below accept exactly what mxspool's own parser accepts
 * (src/config/value.rs); the tests run both on the same samples.
 * Every Value has a placeholder that is a valid example.
 */

/* The firewall rule the package's uci-defaults script adds, disabled
 * (board/openwrt/files/mxspool.defaults). */
var FW_RULE = 'mxspool_smtp';
var FW_RULE_NAME = 'Allow-SMTP-mxspool';

var MAX_DURATION_SECS = 4294967295;
var UNIT = { s: 1, m: 60, h: 3600, d: 86400 };

/* `90s`, `15m`, `4h`, `4d`: digits and a unit, within u32 seconds. */
function durationSecs(v) {
	var m = /^([0-9]+)([smhd])$/.exec(v);
	if (!m)
		return null;
	var n = Number(m[1]) * UNIT[m[2]];
	return (n <= MAX_DURATION_SECS) ? n : null;
}

/* `10485760`, `64K`, `10M`, `1G` (powers of 1024). */
function sizeBytes(v) {
	var m = /^([0-9]+)([KMGkmg]?)$/.exec(v);
	if (!m)
		return null;
	var mul = { '': 1, k: 1024, m: 1048576, g: 1073741824 }[m[2].toLowerCase()];
	return Number(m[1]) * mul;
}

function isIPv4(v) {
	var p = v.split('.');
	return p.length == 4 && p.every(function(x) {
		return /^[0-9]{1,3}$/.test(x) && Number(x) <= 255;
	});
}

function isIPv6(v) {
	if (!/^[0-9a-fA-F:.]+$/.test(v) || v.indexOf(':') < 0 || /:::/.test(v))
		return false;
	var halves = v.split('::');
	if (halves.length > 2)
		return false;
	var groups = 0;
	for (var i = 0; i < halves.length; i++) {
		if (halves[i] === '')
			continue;
		var parts = halves[i].split(':');
		for (var j = 0; j < parts.length; j++) {
			var last = (i == halves.length - 1 && j == parts.length - 1);
			if (last && parts[j].indexOf('.') >= 0) {
				if (!isIPv4(parts[j]))
					return false;
				groups += 2;
			}
			else if (/^[0-9a-fA-F]{1,4}$/.test(parts[j]))
				groups++;
			else
				return false;
		}
	}
	return (halves.length == 2) ? groups < 8 : groups == 8;
}

function isPort(v) {
	return /^[0-9]+$/.test(v) && Number(v) >= 1 && Number(v) <= 65535;
}

/* A DNS name of at least MIN labels (src/config/value.rs domain_name):
 * ASCII letters, digits and '-', the last label not all digits. */
function isDomain(v, min) {
	var s = v.replace(/\.$/, '');
	if (s === '' || s.length > 253)
		return false;
	var labels = s.split('.');
	if (labels.length < min || /^[0-9]+$/.test(labels[labels.length - 1]))
		return false;
	return labels.every(function(l) {
		return l.length >= 1 && l.length <= 63 && /^[A-Za-z0-9-]+$/.test(l) && !/^-|-$/.test(l);
	});
}

/* HOST[:PORT] as HostPort::parse takes it: a name, an IPv4 address, or [IPv6]. */
function isHostPort(v) {
	var m = /^\[([^\]]+)\](?::(.*))?$/.exec(v);
	if (m)
		return isIPv6(m[1]) && (m[2] === undefined || isPort(m[2]));
	if (isIPv6(v))
		return true;
	var hp = v.split(':');
	if (hp.length > 2)
		return false;
	if (hp.length == 2 && !isPort(hp[1]))
		return false;
	return isIPv4(hp[0]) || isDomain(hp[0], 1);
}

/* IP:PORT for a listener: 0.0.0.0:25, [::]:25 (a port is required). */
function isListen(v) {
	var m = /^\[([^\]]+)\]:(.*)$/.exec(v);
	if (m)
		return isIPv6(m[1]) && isPort(m[2]);
	var hp = v.split(':');
	return hp.length == 2 && isIPv4(hp[0]) && isPort(hp[1]);
}

/* IP[:PORT] of a DNS server, port 53 by default. */
function isResolver(v) {
	return isIPv4(v) || isIPv6(v) || isListen(v) || /^\[([^\]]+)\]$/.test(v) && isIPv6(v.slice(1, -1));
}

function isCidr(v) {
	var p = v.split('/');
	if (p.length > 2)
		return false;
	var max = isIPv4(p[0]) ? 32 : isIPv6(p[0]) ? 128 : -1;
	if (max < 0)
		return false;
	return p.length == 1 || (/^[0-9]+$/.test(p[1]) && Number(p[1]) <= max);
}

function isScore(v) {
	var m = /^-?([0-9]+)(\.[0-9]{1,2})?$/.exec(v);
	return !!m && Math.abs(parseFloat(v)) <= 100000;
}

function isBase64Of32(v) {
	if (!/^[A-Za-z0-9+\/]*={0,2}$/.test(v) || v.length != 44)
		return false;
	return /^[A-Za-z0-9+\/]{43}=$/.test(v);
}

function isLocalPart(v) {
	return v !== '' && !/[\s<>,@]/.test(v);
}

/* local part, or a full address (its domain is checked against the section's name by mxspool). */
function isUser(v) {
	var at = v.lastIndexOf('@');
	return (at < 0) ? isLocalPart(v) : isLocalPart(v.slice(0, at)) && isDomain(v.slice(at + 1), 2);
}

/* domain, .domain (its subdomains) or local@domain. */
function isSenderPattern(v) {
	var at = v.lastIndexOf('@');
	if (at >= 0)
		return isLocalPart(v.slice(0, at)) && isDomain(v.slice(at + 1), 1);
	return isDomain(v.charAt(0) == '.' ? v.slice(1) : v, 1);
}

function msg(ok, text) {
	return ok ? true : text;
}

/* The validators (LuCI calls them as validate(section_id, value)); the
 * tests call them through the options they are attached to. */
var check = {
	duration: function(sid, v) {
		return v === '' || msg(durationSecs(v) != null, _('Expecting a duration: a whole number with a unit s, m, h or d, like 90s, 15m, 4h or 4d'));
	},
	positiveDuration: function(sid, v) {
		return v === '' || msg(durationSecs(v) > 0, _('Expecting a duration longer than 0s: a whole number with a unit s, m, h or d, like 90s, 15m, 4h or 4d'));
	},
	greetPause: function(sid, v) {
		var s = durationSecs(v);
		return v === '' || msg(s != null && s <= 30, _('Expecting a duration of at most 30s, like 2s'));
	},
	size: function(sid, v) {
		return v === '' || msg(sizeBytes(v) != null, _('Expecting a size: a whole number with an optional K, M or G, like 10M'));
	},
	positiveSize: function(sid, v) {
		return v === '' || msg(sizeBytes(v) > 0, _('Expecting a size greater than 0, like 10M'));
	},
	journalSize: function(sid, v) {
		var n = sizeBytes(v);
		return v === '' || msg(n === 0 || (n >= 65536 && n <= 1073741824), _('Expecting 0 (no journal) or a size from 64K to 1G'));
	},
	count: function(sid, v) {
		return v === '' || msg(/^[0-9]+$/.test(v) && Number(v) >= 1, _('Expecting a whole number of at least 1'));
	},
	retry: function(sid, v) {
		var p = v.trim().split(/\s+/);
		var i = durationSecs(p[0] || ''), s = durationSecs(p[1] || '');
		return v === '' || msg(p.length == 2 && i > 0 && s != null && s >= i,
			_("Expecting 'INTERVAL SPAN' (retry every INTERVAL for SPAN), like '15m 24h'"));
	},
	hostname: function(sid, v) {
		return v === '' || msg(isDomain(v, 2), _('Expecting a full host name, like mx2.example.net'));
	},
	hostPort: function(sid, v) {
		return v === '' || msg(isHostPort(v), _('Expecting HOST or HOST:PORT, IPv6 as [ADDRESS]:PORT'));
	},
	deliverTo: function(sid, v) {
		return v === '' || v.toLowerCase() == 'mx' || msg(isHostPort(v), _("Expecting 'mx' or HOST[:PORT]"));
	},
	listen: function(sid, v) {
		return v === '' || msg(isListen(v), _('Expecting IP:PORT, like 0.0.0.0:25 or [::]:25'));
	},
	resolver: function(sid, v) {
		return v === '' || msg(isResolver(v), _('Expecting an IP address with an optional port, like 127.0.0.1 or [::1]:53'));
	},
	cidr: function(sid, v) {
		return v === '' || msg(isCidr(v), _('Expecting an IP address or network, like 192.0.2.0/24'));
	},
	ipaddr: function(sid, v) {
		return v === '' || msg(isIPv4(v) || isIPv6(v), _('Expecting an IP address'));
	},
	absPath: function(sid, v) {
		return v === '' || msg(v.charAt(0) == '/', _('Expecting an absolute path'));
	},
	command: function(sid, v) {
		return v === '' || msg(v.trim().charAt(0) == '/', _('Expecting an absolute program path (no shell, no PATH), then its arguments'));
	},
	sysUser: function(sid, v) {
		return v === '' || msg(v.length <= 32 && /^[A-Za-z0-9_.][A-Za-z0-9_.-]*$/.test(v), _('Expecting a user name'));
	},
	user: function(sid, v) {
		var at = v.lastIndexOf('@');
		var name = String(this.section.formvalue(sid, 'name') || '').toLowerCase().replace(/\.$/, '');
		return v === '' || msg(isUser(v) && (at < 0 || v.slice(at + 1).toLowerCase().replace(/\.$/, '') === name),
			_('Expecting a local part (alice) or an address in this domain'));
	},
	senderPattern: function(sid, v) {
		return v === '' || msg(isSenderPattern(v), _('Expecting a domain, .domain (its subdomains) or an address'));
	},
	dnsbl: function(sid, v) {
		return v === '' || msg(isDomain(v, 2), _('Expecting a DNSBL zone, like zen.spamhaus.org'));
	},
	score: function(sid, v) {
		return v === '' || msg(isScore(v), _('Expecting a score like 5 or 5.0 or -1.25'));
	},
	greeting: function(sid, v) {
		return v === '' || msg(isIPv4(v) || isIPv6(v) || isDomain(v, 1), _('Expecting a host name (the first word of the greeting) or an IP address'));
	},
	tlsPin: function(sid, v) {
		return v === '' || msg(/^sha256:/.test(v) && isBase64Of32(v.slice(7)), _("Expecting 'sha256:' and the base64 of a 32-byte SHA-256 digest"));
	}
};

/* A Value (or DynamicList) with a validator and a valid example. */
function field(s, tab, cls, name, title, descr, validate, example) {
	var o = s.taboption(tab, cls, name, title, descr);
	if (validate)
		o.validate = validate;
	if (example != null)
		o.placeholder = example;
	return o;
}

function flag(s, tab, name, title, descr, dflt) {
	var o = s.taboption(tab, form.Flag, name, title, descr);
	o.default = dflt;
	o.rmempty = false;
	return o;
}

return view.extend({
	/* The firewall config, when there is one (a router without the
	 * firewall package has none): its rule for port 25 gets a checkbox. */
	load: function() {
		return L.resolveDefault(uci.load('firewall'), null);
	},

	render: function(firewall) {
		var m, s, o;

		m = new form.Map('mxspool', _('Mail relay'),
			_('mxspool keeps mail for your domains while their own server is unreachable (a backup MX) or relays it to a server on another port. Save & Apply reloads the daemon; a configuration mxspool check refuses keeps the old one running (see the Log tab).'));

		s = m.section(form.NamedSection, 'main', 'mxspool', _('Service'));
		s.addremove = false;

		s.tab('general', _('General'));
		s.tab('limits', _('Limits'));
		s.tab('delivery', _('Delivery'));
		s.tab('callahead', _('Call-ahead'));
		s.tab('frontdoor', _('Filtering'));
		s.tab('tls', _('TLS'));
		s.tab('alerts', _('Alerts'));
		s.tab('advanced', _('Advanced'));

		flag(s, 'general', 'enabled', _('Enabled'), _('Start the daemon (the init script starts nothing while this is off).'), '1');
		o = field(s, 'general', form.Value, 'hostname', _('Host name'), _('The name this router has in the MX records of your domains; used in the greeting and EHLO.'), check.hostname, 'mx2.example.net');
		o.rmempty = false;
		field(s, 'general', form.DynamicList, 'listen', _('Listen on'), _('IP:PORT; default 0.0.0.0:25 and [::]:25.'), check.listen, '0.0.0.0:25');
		o = field(s, 'general', form.Value, 'spool_dir', _('Spool directory'), _('Persistent storage: the flash overlay or a USB disk, never /tmp or /var (RAM: queued mail would be lost at reboot). It is not created when missing, so mail never lands under an unmounted mount point.'), check.absPath, '/mnt/usb/mxspool');
		o.rmempty = false;
		flag(s, 'general', 'allow_volatile_spool', _('Allow a spool in RAM'), _('For testing only: accept a spool directory on tmpfs or ramfs.'), '0');
		field(s, 'general', form.Value, 'max_spool_size', _('Spool size limit'), _('Over this (or with the disk full) new mail gets 452 4.3.1. Keep it below the free space of the spool\'s file system.'), check.positiveSize, '64M');
		field(s, 'general', form.Value, 'journal_size', _('Journal size'), _('Commit journal preallocated in the spool directory; 0: none. 1M on a small flash.'), check.journalSize, '4M');
		field(s, 'general', form.Value, 'user', _('Run as user'), _('Drop to this user after binding port 25.'), check.sysUser, 'mxspool');
		flag(s, 'general', 'flush_on_ifup', _('Retry when the WAN comes up'), _('Queued mail is retried a few seconds after the WAN interface comes up.'), '1');

		field(s, 'limits', form.Value, 'max_message_size', _('Largest message'), null, check.positiveSize, '10M');
		field(s, 'limits', form.Value, 'max_recipients', _('Recipients per message'), null, check.count, '100');
		field(s, 'limits', form.Value, 'max_connections', _('Connections'), _('Over this: 421 4.7.0 and close.'), check.count, '20');
		field(s, 'limits', form.Value, 'max_connections_per_ip', _('Connections per client'), null, check.count, '5');
		field(s, 'limits', form.Value, 'max_hops', _('Largest number of Received headers'), _('More: refused with 554 5.4.6 (a mail loop).'), check.count, '30');
		field(s, 'limits', form.Value, 'max_errors', _('Errors per session'), _('Error replies before 421 and close.'), check.count, '10');

		field(s, 'delivery', form.DynamicList, 'retry', _('Retry schedule'), _("'INTERVAL SPAN' steps: retry every INTERVAL for SPAN; after the last span the mail is returned to its sender. Default: 15m 24h, 1h 4d, 2h 5d."), check.retry, '15m 24h');
		field(s, 'delivery', form.Value, 'host_check_interval', _('Host check interval'), _('How often a destination with queued mail is resolved again; a changed address retries its mail at once.'), check.positiveDuration, '60s');
		field(s, 'delivery', form.Value, 'smarthost', _('Smarthost'), _('HOST:PORT for mail mxspool writes itself (DSNs); empty: the MX of the recipient domain.'), check.hostPort, 'smtp.example.net:587');
		field(s, 'delivery', form.Value, 'resolver', _('DNS server'), _('Default: the first nameserver of /tmp/resolv.conf.d/resolv.conf.auto.'), check.resolver, '127.0.0.1:53');
		field(s, 'delivery', form.Value, 'max_destination_connections', _('Connections per destination'), null, check.count, '2');
		field(s, 'delivery', form.Value, 'max_destination_queue', _('Jobs waiting per destination'), null, check.count, '128');
		field(s, 'delivery', form.Value, 'connect_timeout', _('Connect timeout'), null, check.positiveDuration, '30s');
		field(s, 'delivery', form.Value, 'greeting_timeout', _('Greeting timeout'), null, check.positiveDuration, '5m');
		field(s, 'delivery', form.Value, 'transaction_timeout', _('Transaction timeout'), _('One whole transaction, MAIL to the reply after the message.'), check.positiveDuration, '30m');

		field(s, 'callahead', form.Value, 'callahead_timeout', _('Probe time budget'), _('The whole call-ahead probe; a primary that does not answer in time: the mail is accepted.'), check.positiveDuration, '10s');
		field(s, 'callahead', form.Value, 'callahead_positive_ttl', _('Remember valid addresses'), null, check.positiveDuration, '31d');
		field(s, 'callahead', form.Value, 'callahead_negative_ttl', _('Remember unknown addresses'), null, check.positiveDuration, '3d');
		field(s, 'callahead', form.Value, 'callahead_max_probes', _('Probes at once'), null, check.count, '8');

		field(s, 'frontdoor', form.DynamicList, 'dnsbl', _('DNS blocklists'), _('A client listed is refused with 554 and the list\'s reason.'), check.dnsbl, 'zen.spamhaus.org');
		field(s, 'frontdoor', form.Value, 'dnsbl_timeout', _('Blocklist lookup timeout'), null, check.positiveDuration, '5s');
		field(s, 'frontdoor', form.DynamicList, 'client_allow', _('Allowed clients'), _('Networks that skip the blocklists and the deny lists.'), check.cidr, '192.0.2.0/24');
		field(s, 'frontdoor', form.DynamicList, 'client_deny', _('Refused clients'), _('Refused with 554 5.7.1.'), check.cidr, '198.51.100.0/24');
		field(s, 'frontdoor', form.DynamicList, 'sender_allow', _('Allowed senders'), _('A domain, .domain (its subdomains) or a full address.'), check.senderPattern, 'partner.example');
		field(s, 'frontdoor', form.DynamicList, 'sender_deny', _('Refused senders'), null, check.senderPattern, 'spam.example');
		field(s, 'frontdoor', form.Value, 'greet_pause', _('Greeting pause'), _('Wait this long before the greeting; a client that talks first is refused. 0s: off.'), check.greetPause, '2s');
		field(s, 'frontdoor', form.Value, 'spamd', _('SpamAssassin (spamd)'), _('HOST[:PORT], port 783 by default; empty: off.'), check.hostPort, '127.0.0.1:783');
		field(s, 'frontdoor', form.Value, 'spam_tag_score', _('Tag score'), null, check.score, '5.0');
		field(s, 'frontdoor', form.Value, 'spam_reject_score', _('Reject score'), null, check.score, '10.0');
		field(s, 'frontdoor', form.Value, 'clamd', _('ClamAV (clamd)'), _('HOST[:PORT], port 3310 by default; empty: off.'), check.hostPort, '127.0.0.1:3310');
		flag(s, 'frontdoor', 'scan_required', _('Refuse unscanned mail'), _('A scanner down or timed out: 451 instead of accepting the mail unscanned.'), '0');
		field(s, 'frontdoor', form.Value, 'scan_timeout', _('Scan timeout'), null, check.positiveDuration, '30s');

		o = field(s, 'tls', form.Value, 'tls_cert', _('Certificate (PEM)'), _('With the key, STARTTLS is offered.'), check.absPath, '/etc/mxspool/cert.pem');
		o = field(s, 'tls', form.Value, 'tls_key', _('Private key (PEM)'), null, function(sid, v) {
			var cert = this.section.formvalue(sid, 'tls_cert') || '';
			if ((v === '') != (cert === ''))
				return _('Certificate and key go together: set both or neither');
			return check.absPath(sid, v);
		}, '/etc/mxspool/key.pem');

		field(s, 'alerts', form.Value, 'alert_command', _('Alert command'), _('Program run (no shell) on alerts: primary unreachable, spool 80% full, a guard refusal, mail returned. The event is in MXSPOOL_ALERT_* variables.'), check.command, '/usr/bin/mxspool-notify');
		field(s, 'alerts', form.Value, 'alert_after', _('Unreachable alert after'), null, check.positiveDuration, '1h');

		field(s, 'advanced', form.Value, 'control_socket', _('Control socket'), null, check.absPath, '/var/run/mxspool.sock');
		flag(s, 'advanced', 'syslog', _('Log to syslog'), _('Off: to stderr (procd logs it as errors).'), '1');
		o = s.taboption('advanced', form.ListValue, 'log_level', _('Log level'));
		['error', 'warn', 'info', 'debug', 'trace'].forEach(function(l) { o.value(l); });
		o.default = 'info';
		field(s, 'advanced', form.Value, 'cache_size', _('Database cache'), null, check.size, '4M');
		field(s, 'advanced', form.Value, 'command_timeout', _('Command timeout'), null, check.positiveDuration, '5m');
		field(s, 'advanced', form.Value, 'data_timeout', _('Message data timeout'), null, check.positiveDuration, '3m');

		s = m.section(form.GridSection, 'domain', _('Domains'), _('One row per domain this router accepts mail for.'));
		s.addremove = true;
		s.anonymous = false;
		s.nodescriptions = true;

		s.tab('general', _('Delivery'));
		s.tab('verify', _('Recipients'));
		s.tab('guard', _('Guard'), _('Mail is handed only to your own server: these checks catch another machine at its (dynamic) address.'));

		o = field(s, 'general', form.Value, 'name', _('Domain'), null, check.hostname, 'example.com');
		o.rmempty = false;
		o = field(s, 'general', form.Value, 'deliver_to', _('Deliver to'), _("'mx': the domain's MX hosts that rank above this router (backup MX); HOST[:PORT]: always that server (relay)."), check.deliverTo, 'mx');
		o.value('mx', _('mx (backup MX)'));
		o = field(s, 'general', form.Value, 'port', _('Port'), _("For 'mx' delivery."), function(sid, v) {
			return v === '' || msg(isPort(v), _('Expecting a port number'));
		}, '25');
		o.datatype = 'port';
		o.depends('deliver_to', 'mx');
		o.depends('deliver_to', '');
		o.modalonly = true;

		o = s.taboption('verify', form.ListValue, 'verify', _('Verify recipients'));
		o.value('callahead', _('callahead: ask the primary'));
		o.value('users', _('users: only the listed users'));
		o.value('none', _('none: accept every address'));
		o.default = 'callahead';
		o.validate = function(sid, v) {
			var users = this.section.formvalue(sid, 'user') || [];
			return v != 'users' || users.length > 0 || _("'users' needs at least one user, or every recipient is refused");
		};
		o = field(s, 'verify', form.DynamicList, 'user', _('Users'), _("With 'users' the only ones accepted; with 'callahead' accepted without asking."), check.user, 'alice');
		o.modalonly = true;
		o = s.taboption('verify', form.ListValue, 'on_tempfail', _('Primary answers 4xx'), _('When the call-ahead gets a temporary error.'));
		o.value('accept', _('accept (queue it)'));
		o.value('defer', _('defer (answer 450)'));
		o.default = 'accept';
		o.modalonly = true;

		o = field(s, 'guard', form.DynamicList, 'offline_address', _('Offline addresses'), _('Never connect to these (e.g. the address your DynDNS name falls back to).'), check.ipaddr, '203.0.113.7');
		o.modalonly = true;
		o = field(s, 'guard', form.Value, 'expect_greeting', _('Expected greeting'), _('The first word of your server\'s 220 greeting.'), check.greeting, 'mail.example.com');
		o.modalonly = true;
		o = field(s, 'guard', form.Value, 'tls_pin', _('TLS pin'), _("'sha256:BASE64' of your server's certificate public key; requires STARTTLS."), check.tlsPin, 'sha256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=');
		o.modalonly = true;

		var maps = [ m ], after = [];
		var ours = function(sid) {
			return sid === FW_RULE || uci.get('firewall', sid, 'name') === FW_RULE_NAME;
		};
		if (firewall && uci.sections('firewall', 'rule').some(function(r) { return ours(r['.name']); })) {
			/* LuCI saves every form.Map of a page (view.handleSave), so the
			 * checkbox is saved and applied with the rest. */
			var fw = new form.Map('firewall', _('Firewall'));
			s = fw.section(form.TypedSection, 'rule', _('Port 25 from the internet'),
				_('A backup MX must accept connections on port 25 from the internet. The package added a firewall rule for it (Allow-SMTP-mxspool), switched off until you switch it on here. Switch it on once the settings above are right and your domain\'s MX record points at this router.'));
			s.anonymous = true;
			s.addremove = false;
			/* The package's rule only: its section, or a rule of its name
			 * (the ACL grants the whole firewall config all the same). */
			s.filter = ours;
			o = s.option(form.Flag, 'enabled', _('Open port 25 from the WAN'),
				_('Accept TCP connections to port 25 of this router from the wan zone (IPv4 and IPv6).'));
			o.default = '1';
			o.rmempty = false;
			maps.push(fw);
		}
		else if (firewall) {
			after.push(E('div', { 'class': 'cbi-section', 'id': 'mxspool-no-fw-rule' }, [
				E('h3', {}, _('Port 25 from the internet')),
				E('p', {}, _('The firewall has no rule named Allow-SMTP-mxspool (the package adds one, switched off; it was removed since). A backup MX needs TCP port 25 open from the wan zone: add that rule under Network → Firewall → Traffic Rules.'))
			]));
		}

		return Promise.all(maps.map(function(map) { return map.render(); })).then(function(nodes) {
			return E('div', {}, nodes.concat(after));
		});
	}
});
