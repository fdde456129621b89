'use strict';
'require baseclass';
'require fs';

/*
 * Status → Overview: queued messages, the oldest one's age, and whether
 * the destinations answer — from `mxspool queue stats --json`.
 */

function duration(s) {
	s = Math.max(0, Math.floor(Number(s) || 0));
	if (s >= 86400) return Math.floor(s / 86400) + 'd ' + Math.floor(s % 86400 / 3600) + 'h';
	if (s >= 3600) return Math.floor(s / 3600) + 'h ' + Math.floor(s % 3600 / 60) + 'm';
	if (s >= 60) return Math.floor(s / 60) + 'm ' + (s % 60) + 's';
	return s + 's';
}

return baseclass.extend({
	title: _('Mail relay'),

	load: function() {
		return L.resolveDefault(fs.exec('/usr/sbin/mxspool', ['queue', 'stats', '--json', '-c', '/etc/config/mxspool']), null);
	},

	render: function(res) {
		/* Not installed, no permission, or a failure: nothing to show. */
		if (!res)
			return null;
		if (res.code !== 0) {
			var stopped = /is not running/.test(res.stderr || '');
			return E('div', { 'class': 'cbi-section' }, E('p', {},
				stopped ? _('mxspool is not running.') : _('mxspool did not answer: ') + (res.stderr || '').trim()));
		}
		var st;
		try {
			st = JSON.parse(res.stdout);
		}
		catch (e) {
			return null;
		}
		var down = Object.keys(st.unreachable || {});
		var primary = down.length
			? _('unreachable: ') + down.map(function(d) {
				return d + ' ' + _('for') + ' ' + duration(st.unreachable[d]);
			}).join(', ')
			: _('reachable');
		var rows = [
			[_('Queued messages'), String(st.queued)],
			[_('Oldest message'), st.queued > 0 ? duration(st.oldest_age) : '-'],
			[_('Primary'), primary],
			[_('Delivered / returned since start'), st.delivered + ' / ' + st.bounced]
		];
		return E('table', { 'class': 'table', 'id': 'mxspool-status' }, rows.map(function(r) {
			return E('tr', { 'class': 'tr' }, [
				E('td', { 'class': 'td left', 'width': '33%' }, r[0]),
				E('td', { 'class': 'td left' }, r[1])
			]);
		}));
	}
});
