'use strict';
'require view';
'require fs';
'require ui';
'require uci';
'require poll';
'require dom';

/*
 * The queue: `mxspool queue list --json --limit 50` and `queue stats
 * --json`, polled; flush (all or one domain), delete, bounce and retag,
 * each after a confirmation. Every command here is granted one by one in
 * root/usr/share/rpcd/acl.d/luci-app-mxspool.json.
 */

var MXSPOOL = '/usr/sbin/mxspool';
/* Last on every command line: the ACL's wildcards (rpcd's fnmatch '*' spans
 * spaces) cannot then point mxspool at another file, as the last -c wins. */
var CONFIG = ['-c', '/etc/config/mxspool'];
/* rpcd's file.exec buffers the whole answer: a page, not the whole queue. */
var PAGE = '50';

/* 90 -> "1m 30s", 7200 -> "2h 0m": the two largest units. */
function duration(s) {
	s = Math.max(0, Math.floor(Number(s) || 0));
	var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600),
	    m = Math.floor(s % 3600 / 60), sec = s % 60;
	if (d > 0) return d + 'd ' + h + 'h';
	if (h > 0) return h + 'h ' + m + 'm';
	if (m > 0) return m + 'm ' + sec + 's';
	return sec + 's';
}

function bytes(n) {
	n = Number(n) || 0;
	if (n >= 1048576) return (n / 1048576).toFixed(1) + ' MiB';
	if (n >= 1024) return (n / 1024).toFixed(1) + ' KiB';
	return n + ' B';
}

/* Runs `mxspool ARGS...`: resolves to { ok, down, json, text, error }.
 * `down`: the daemon is not running (the CLI exits 1 and says so when its
 * control socket is absent). */
function mxspool(args, json) {
	return fs.exec(MXSPOOL, args.concat(CONFIG)).then(function(res) {
		var out = { ok: res.code === 0, down: false, json: null, text: res.stdout || '', error: (res.stderr || '').trim() };
		if (res.code === 1 && /is not running/.test(out.error))
			out.down = true;
		if (out.ok && json) {
			try {
				out.json = JSON.parse(res.stdout);
			}
			catch (e) {
				out.ok = false;
				out.error = _('unreadable answer from mxspool: ') + e.message;
			}
		}
		return out;
	}, function(err) {
		return { ok: false, down: false, json: null, text: '', error: String(err && err.message || err) };
	});
}

return view.extend({
	load: function() {
		return Promise.all([
			uci.load('mxspool'),
			this.fetch()
		]);
	},

	fetch: function() {
		return Promise.all([
			mxspool(['queue', 'list', '--json', '--limit', PAGE], true),
			mxspool(['queue', 'stats', '--json'], true)
		]);
	},

	domains: function() {
		return uci.sections('mxspool', 'domain').map(function(s) {
			return s.name;
		}).filter(function(n) { return n; });
	},

	/* Asks first; then runs the command, says what it answered, and refreshes. */
	confirm: function(title, text, label, args) {
		var self = this;
		ui.showModal(title, [
			E('p', {}, text),
			E('div', { 'class': 'right' }, [
				E('button', { 'class': 'cbi-button', 'click': ui.hideModal }, _('Cancel')),
				' ',
				E('button', {
					'class': 'cbi-button cbi-button-negative important',
					'click': function() { return self.act(args); }
				}, label)
			])
		]);
	},

	act: function(args) {
		var self = this;
		return mxspool(args, false).then(function(r) {
			ui.hideModal();
			if (r.ok)
				ui.addNotification(null, E('p', {}, r.text.trim() || _('Done')), 'info');
			else if (r.down)
				ui.addNotification(null, E('p', {}, _('mxspool is not running: nothing was changed.')), 'warning');
			else
				ui.addNotification(null, E('p', {}, _('mxspool refused: ') + r.error), 'danger');
			return self.refresh();
		});
	},

	flushAll: function() {
		this.confirm(_('Retry all queued mail now?'),
			_('Every queued message is tried at once and its back-off is reset.'),
			_('Flush'), ['queue', 'flush']);
	},

	flushDomain: function(domain) {
		if (!domain)
			return;
		this.confirm(_('Retry the mail of ') + domain + _(' now?'),
			_('Every queued message of this domain is tried at once and its back-off is reset.'),
			_('Flush'), ['queue', 'flush', domain]);
	},

	deleteMessage: function(id) {
		this.confirm(_('Delete message ') + id + '?',
			_('The message is dropped from the queue without telling its sender. This cannot be undone.'),
			_('Delete'), ['queue', 'delete', id]);
	},

	bounceMessage: function(id, sender) {
		this.confirm(_('Return message ') + id + _(' to its sender?'),
			_('A delivery status notification goes to ') + (sender ? '<' + sender + '>' : _('the sender')) + _(' and the message leaves the queue.'),
			_('Return to sender'), ['queue', 'bounce', id]);
	},

	retag: function(domain, host) {
		host = (host || '').trim();
		if (!domain || !/^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$/.test(host)) {
			ui.addNotification(null, E('p', {}, _('Choose a domain and give the new destination as HOST or HOST:PORT.')), 'warning');
			return;
		}
		this.confirm(_('Send the queued mail of ') + domain + _(' to ') + host + '?',
			_('Every queued message of this domain is re-pointed at the new destination (until the configuration changes it again).'),
			_('Retag'), ['queue', 'retag', domain, host]);
	},

	refresh: function() {
		var self = this;
		return this.fetch().then(function(data) {
			if (self.node)
				dom.content(self.node, self.renderQueue(data));
		});
	},

	renderStats: function(st) {
		var rejected = 0;
		for (var k in (st.rejected || {}))
			rejected += Number(st.rejected[k]) || 0;
		var unreachable = Object.keys(st.unreachable || {});
		var rows = [
			[_('Queued messages'), String(st.queued)],
			[_('Oldest message'), st.queued > 0 ? duration(st.oldest_age) : '-'],
			[_('Spool'), bytes(st.spool_bytes) + (st.max_spool_size ? ' / ' + bytes(st.max_spool_size) : '')],
			[_('Destinations unreachable'), unreachable.length ? unreachable.map(function(d) {
				return d + ' (' + duration(st.unreachable[d]) + ')';
			}).join(', ') : _('none')],
			[_('Accepted'), String(st.accepted)],
			[_('Rejected'), String(rejected) + (rejected ? ' (' + Object.keys(st.rejected).map(function(r) {
				return r + ' ' + st.rejected[r];
			}).join(', ') + ')' : '')],
			[_('Delivered'), String(st.delivered)],
			[_('Deferred'), String(st.deferred)],
			[_('Returned to sender'), String(st.bounced)],
			[_('Guard refusals'), String(st.guard_refusals)]
		];
		return E('table', { 'class': 'table', 'id': 'mxspool-stats' }, rows.map(function(r) {
			return E('tr', { 'class': 'tr' }, [
				E('td', { 'class': 'td left', 'width': '33%' }, r[0]),
				E('td', { 'class': 'td left' }, r[1])
			]);
		}));
	},

	renderMessages: function(list) {
		var self = this;
		var msgs = list.messages || [];
		var head = E('tr', { 'class': 'tr table-titles' }, [
			_('Queue ID'), _('Age'), _('Size'), _('Sender'), _('Pending recipients'),
			_('Destination'), _('Attempts'), _('Next attempt'), _('Last error'), ''
		].map(function(t) { return E('th', { 'class': 'th' }, t); }));
		var rows = msgs.map(function(m) {
			/* next_attempt and arrival are unix seconds of the router's
			 * clock; arrival + age is the router's "now". */
			var next = Number(m.next_attempt) - (Number(m.arrival) + Number(m.age));
			return E('tr', { 'class': 'tr', 'data-id': m.id }, [
				E('td', { 'class': 'td' }, m.id),
				E('td', { 'class': 'td' }, duration(m.age)),
				E('td', { 'class': 'td' }, bytes(m.size)),
				E('td', { 'class': 'td' }, m.sender === '' ? '<>' : m.sender),
				E('td', { 'class': 'td' }, (m.recipients || []).join(', ')),
				E('td', { 'class': 'td' }, m.destination),
				E('td', { 'class': 'td' }, String(m.attempts)),
				E('td', { 'class': 'td' }, next > 0 ? _('in ') + duration(next) : _('now')),
				E('td', { 'class': 'td' }, m.last_error || ''),
				E('td', { 'class': 'td cbi-section-actions' }, [
					E('button', {
						'class': 'cbi-button cbi-button-remove',
						'click': function() { self.deleteMessage(m.id); }
					}, _('Delete')),
					' ',
					E('button', {
						'class': 'cbi-button cbi-button-neutral',
						'click': function() { self.bounceMessage(m.id, m.sender); }
					}, _('Return'))
				])
			]);
		});
		if (!rows.length)
			rows = [E('tr', { 'class': 'tr placeholder' }, E('td', { 'class': 'td' }, E('em', {}, _('The queue is empty.'))))];
		var table = E('table', { 'class': 'table', 'id': 'mxspool-queue' }, [head].concat(rows));
		var total = Number(list.total);
		if (total > msgs.length)
			return [table, E('p', {}, _('Showing the oldest ') + msgs.length + _(' of ') + total + _(' messages.'))];
		return [table];
	},

	renderActions: function() {
		var self = this;
		var domains = this.domains();
		var pick = E('select', { 'class': 'cbi-input-select', 'id': 'mxspool-domain' },
			domains.map(function(d) { return E('option', { 'value': d }, d); }));
		var dest = E('input', { 'class': 'cbi-input-text', 'id': 'mxspool-retag', 'placeholder': 'mail.example.com:2525' });
		return E('div', { 'class': 'cbi-section-node' }, [
			E('button', { 'class': 'cbi-button cbi-button-apply', 'click': function() { self.flushAll(); } }, _('Retry all now')),
			' ', pick, ' ',
			E('button', { 'class': 'cbi-button cbi-button-apply', 'click': function() { self.flushDomain(pick.value); } }, _('Retry this domain now')),
			' ', dest, ' ',
			E('button', { 'class': 'cbi-button cbi-button-action', 'click': function() { self.retag(pick.value, dest.value); } }, _('Send this domain\'s mail there'))
		]);
	},

	renderQueue: function(data) {
		var list = data[0], stats = data[1];
		if (list.down || stats.down)
			return E('div', { 'class': 'alert-message warning', 'id': 'mxspool-down' }, [
				E('h4', {}, _('mxspool is not running')),
				E('p', {}, _('Nothing can be shown or changed while the daemon is stopped. Enable it under Settings, or look at the Log tab for why it stopped.')),
				E('pre', {}, list.error || stats.error)
			]);
		if (!list.ok || !stats.ok)
			return E('div', { 'class': 'alert-message error' }, [
				E('p', {}, _('mxspool did not answer: ') + (list.error || stats.error))
			]);
		return E('div', {}, [
			E('h3', {}, _('Counters')),
			this.renderStats(stats.json),
			E('h3', {}, _('Queued messages'))
		].concat(this.renderMessages(list.json)));
	},

	render: function(data) {
		this.node = E('div', { 'id': 'mxspool-queue-view' }, this.renderQueue(data[1]));
		poll.add(L.bind(this.refresh, this), 5);
		/* The actions stay out of the polled part, so a refresh never
		 * wipes what the owner is typing. */
		return E([], [
			E('h2', {}, _('Mail relay: queue')),
			E('div', { 'class': 'cbi-map-descr' }, _('Mail waiting for its destination, refreshed every 5 seconds.')),
			this.renderActions(),
			this.node
		]);
	},

	handleSaveApply: null,
	handleSave: null,
	handleReset: null
});
