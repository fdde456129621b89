'use strict';
'require view';
'require fs';
'require poll';
'require dom';

/*
 * The daemon's syslog lines. LuCI's LogreadBox (tools.views) reads the
 * whole system log through ubus (log read) and filters it in the browser,
 * which needs read access to every service's log lines and to the system
 * configuration; this page asks logread for mxspool's lines only, so the
 * ACL grants exactly `/sbin/logread -e mxspool`.
 */

var LOGREAD = '/sbin/logread';

return view.extend({
	load: function() {
		return this.fetch();
	},

	fetch: function() {
		return fs.exec(LOGREAD, ['-e', 'mxspool']).then(function(res) {
			if (res.code !== 0)
				return { lines: [], error: (res.stderr || '').trim() || _('logread failed') };
			return { lines: (res.stdout || '').split('\n').filter(function(l) { return l !== ''; }), error: null };
		}, function(err) {
			return { lines: [], error: String(err && err.message || err) };
		});
	},

	show: function(log) {
		if (log.error)
			return E('div', { 'class': 'alert-message error' }, _('Unable to read the log: ') + log.error);
		if (!log.lines.length)
			return E('p', {}, E('em', {}, _('No log lines of mxspool yet (with syslog off, they go to stderr: logread shows them as daemon.err lines of mxspool too).')));
		return E('textarea', {
			'id': 'mxspool-log',
			'style': 'width:100%; font-size:12px',
			'readonly': 'readonly',
			'wrap': 'off',
			'rows': Math.min(log.lines.length + 1, 40)
		}, [log.lines.join('\n')]);
	},

	render: function(log) {
		var self = this;
		var box = E('div', { 'id': 'mxspool-log-box' }, this.show(log));
		poll.add(function() {
			return self.fetch().then(function(l) { dom.content(box, self.show(l)); });
		}, 10);
		return E([], [
			E('h2', {}, _('Mail relay: log')),
			E('div', { 'class': 'cbi-map-descr' }, _('The syslog lines of mxspool (logread -e mxspool), newest last, refreshed every 10 seconds.')),
			box
		]);
	},

	handleSaveApply: null,
	handleSave: null,
	handleReset: null
});
